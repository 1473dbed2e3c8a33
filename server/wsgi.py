"""The WSGI entry point gunicorn imports (`server.wsgi:app`).

With preload_app this module runs once in the gunicorn master: bundles are verified and loaded
before the port opens and before any worker forks. The worker starts the warm-up itself
(`post_worker_init` in gunicorn.conf.py), so no onnxruntime call is ever in flight across a fork.
"""

from __future__ import annotations

from server import logs
from server.app import create_app
from server.config import Settings
from server.runtime import ServerRuntime

settings = Settings.from_env()
logs.configure(settings.log_level)
runtime = ServerRuntime.load(settings)
app = create_app(settings, runtime)
