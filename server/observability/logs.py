"""One-line JSON logs that Cloud Logging parses (severity, message, time, extra fields).

Why JSON: Cloud Run forwards stderr lines to Cloud Logging, which lifts `severity` and keeps the
other keys searchable. Request text is never logged here.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON; `extra={...}` keys become top-level fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """Route the `server` loggers to stderr as JSON (gunicorn's loggers use gunicorn.conf.py)."""
    logger = logging.getLogger("server")
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False


def seconds_since_exec(pid: int | None = None) -> float | None:
    """Age of a process (Linux /proc), to log cold start as the user sees it; None elsewhere.

    A gunicorn worker passes its parent's pid: the master is the process that was exec'd.
    """
    try:
        with open(f"/proc/{pid or os.getpid()}/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 overall: starttime, in clock ticks after boot
        with open("/proc/uptime", "rb") as uptime_file:
            uptime = float(uptime_file.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None
