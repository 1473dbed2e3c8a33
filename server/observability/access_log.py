"""gunicorn's logger, minus the access line nobody will see.

With a `logconfig_dict` (server/gunicorn.conf.py) gunicorn counts the access log as on and
builds every request's line (atoms dict, format string) before the `gunicorn.access` logger,
set to WARNING when ACCESS_LOG is false, drops it. This subclass asks that logger first.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger


class QuietAccessLogger(Logger):
    """`logger_class` for gunicorn: access lines are built only when they would be written."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)
