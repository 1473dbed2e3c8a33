"""The WSGI entry point gunicorn imports (`server.wsgi:app`).

With preload_app this module runs once in the gunicorn master: bundles are verified and loaded
before the port opens and before any worker forks. The worker starts the warm-up itself
(`post_worker_init` in gunicorn.conf.py), so no onnxruntime call is ever in flight across a fork.
A missing, corrupt or mismatched bundle stops the process here: one JSON log line, exit 3,
never a half-loaded server.
"""

from __future__ import annotations

import logging
import sys

from server.app import create_app
from server.config import process_settings
from server.inference.loading import EXIT_BAD_BUNDLES, load_failures
from server.observability import logs
from server.runtime import ServerRuntime

settings = process_settings()
logs.configure(settings.log_level)
try:
    runtime = ServerRuntime.load(settings)
except load_failures() as exc:
    logging.getLogger("server").critical(
        "cannot load the bundles; not starting",
        extra={"error": str(exc), "model_dir": str(settings.model_dir)},
    )
    sys.exit(EXIT_BAD_BUNDLES)
app = create_app(settings, runtime)
