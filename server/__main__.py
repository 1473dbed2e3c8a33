"""`python -m server`: the production server (gunicorn + server/gunicorn.conf.py), env-configured.

gunicorn runs in this process (no extra interpreter start on the cold-start path). A bad
configuration or bundle stops it with a one-line message and a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from server.config import ConfigError, process_settings

CONFIG_PATH = Path(__file__).resolve().parent / "gunicorn.conf.py"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        print(
            "usage: python -m server   (configured by env vars; see docs/configuration.md)",
            file=sys.stderr,
        )
        return 2
    try:
        process_settings()
    except ConfigError as exc:
        print(f"server: {exc}", file=sys.stderr)
        return 2
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["gunicorn", "--config", str(CONFIG_PATH), "server.wsgi:app"]
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
