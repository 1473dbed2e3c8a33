"""`python -m server`: the production server (gunicorn + server/gunicorn.conf.py), env-configured.
`python -m server --check`: load MODEL_DIR exactly as the server would (every bundle verified,
the task defaults resolved, one warm-up inference each), say what would be served, and exit;
the deploy gate (cloudbuild.yaml) runs it before any image is built.

gunicorn runs in this process (no extra interpreter start on the cold-start path). A bad
configuration or bundle stops it with a one-line message and a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from server.config import ConfigError, Settings, process_settings
from server.memory import tune_malloc

CONFIG_PATH = Path(__file__).resolve().parent / "gunicorn.conf.py"
USAGE = "usage: python -m server [--check]   (configured by env vars; see docs/configuration.md)"
EXIT_BAD_CONFIG = 2


def check(settings: Settings) -> int:
    """What `--check` prints: one line per bundle (task, default or not), or the refusal."""
    from server.inference.loading import EXIT_BAD_BUNDLES, load_failures, load_models

    try:
        models = load_models(
            settings.model_dir,
            settings.ort_intra_op_threads,
            settings.ort_inter_op_threads,
            settings.default_classifier,
            settings.default_lm,
        )
        for model in models.by_name.values():
            model.warm_up()
    except load_failures() as exc:
        print(f"server: cannot serve {settings.model_dir}: {exc}", file=sys.stderr)
        return EXIT_BAD_BUNDLES
    defaults = {models.default_classifier, models.default_language_model}
    for name, model in models.by_name.items():
        role = "default" if name in defaults else "by name"
        print(f"ok  {model.manifest.model_id:<40} {model.manifest.task:<9} {role}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    tune_malloc()
    if args not in ([], ["--check"]):
        print(USAGE, file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        settings = process_settings()
    except ConfigError as exc:
        print(f"server: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args == ["--check"]:
        return check(settings)
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["gunicorn", "--config", str(CONFIG_PATH), "server.wsgi:app"]
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
