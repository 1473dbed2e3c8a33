"""gunicorn settings, all derived from `server.config.Settings` (env vars, one table).

Cloud Run advice: one worker per vCPU with threads for concurrency, `timeout 0` (the platform
enforces the request timeout), and a graceful timeout inside its 10 s SIGTERM window.
"""

import os

from server.config import process_settings
from server.memory import settle_before_fork
from server.observability.logs import JsonFormatter  # noqa: F401  (named in logconfig_dict below)

_settings = process_settings()
# Threads beyond WEB_THREADS (the admission limit, server/http/admission.py): they answer probes and
# /metrics and shed the excess POSTs with 503 while the admitted requests compute.
CONTROL_THREADS = 4

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.web_workers
worker_class = "gthread"
threads = _settings.web_threads + CONTROL_THREADS
# Loading in the master means a worker (re)start is a fork, not a reload. onnxruntime thread
# pools do not survive fork, so with more than one ORT thread each worker loads its own bundles.
preload_app = _settings.ort_intra_op_threads == 1 and _settings.ort_inter_op_threads == 1
timeout = 0
graceful_timeout = _settings.graceful_timeout_s
keepalive = 5
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-" if _settings.access_log else None
# The gunicornc control socket lives at one fixed path per user: off, so instances never collide
# (tests run several; Cloud Run has no use for it).
control_socket_disable = True
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
# gunicorn builds each access line before the logger level drops it; this class asks first.
logger_class = "server.observability.access_log.QuietAccessLogger"
loglevel = _settings.log_level
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "server.observability.logs.JsonFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        "gunicorn.error": {
            "handlers": ["stderr"],
            "level": _settings.log_level.upper(),
            "propagate": False,
        },
        # With a logconfig gunicorn always emits access lines (INFO); the level switches them.
        "gunicorn.access": {
            "handlers": ["stderr"],
            "level": "INFO" if _settings.access_log else "WARNING",
            "propagate": False,
        },
    },
}


def post_worker_init(worker):
    """Warm the sessions inside the worker that will serve; /readyz turns 200 when done.
    SIGTERM first drains (server/http/drain.py), then runs gunicorn's own handler."""
    import server.wsgi
    from server.http.drain import install_sigterm_drain

    server.wsgi.runtime.start_warm_up(
        exec_pid=os.getppid(), exit_code_on_failure=server.wsgi.EXIT_BAD_BUNDLES
    )
    install_sigterm_drain(worker, server.wsgi.runtime)


def pre_fork(server, worker):
    """With the bundles loaded here, the master's heap is settled before each fork (memory.py)."""
    if server.cfg.preload_app:
        settle_before_fork()


def worker_exit(server, worker):
    """End a preloaded worker with os._exit once it has finished serving.

    The onnxruntime sessions were created in the master; in the forked worker the C++ static
    destructors that a normal interpreter exit runs abort or hang (measured: SIGABRT
    "std::system_error", or a futex wait forever). Requests are done by now, so skip them.
    """
    import logging
    import sys

    if not server.cfg.preload_app:
        return
    error = sys.exc_info()[1]
    code = error.code if isinstance(error, SystemExit) else (1 if error else 0)
    code = code if isinstance(code, int) else (0 if code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
