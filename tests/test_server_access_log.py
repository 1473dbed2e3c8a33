"""server/observability/access_log.py: gunicorn builds no access line the config turns off, and
still writes every one it turns on (the line itself: tests/test_server_startup.py)."""

from __future__ import annotations

import logging
import runpy
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.util import load_class

from server.config import process_settings
from server.observability.access_log import QuietAccessLogger

CONF = Path(__file__).resolve().parents[1] / "server" / "gunicorn.conf.py"


@pytest.fixture(autouse=True)
def _fresh_settings():
    """gunicorn.conf.py reads process_settings(), cached per process: none of this leaks."""
    process_settings.cache_clear()
    yield
    process_settings.cache_clear()


class Built(Exception):
    """Raised by the atoms stand-in: the access line was being built."""


def _logger(monkeypatch: pytest.MonkeyPatch, access_log: bool) -> QuietAccessLogger:
    monkeypatch.setenv("ACCESS_LOG", "true" if access_log else "false")
    monkeypatch.setenv("MODEL_DIR", str(CONF.parent))
    process_settings.cache_clear()  # cached per process; this test changes the environment
    settings = runpy.run_path(str(CONF))
    cfg = Config()
    cfg.set("logconfig_dict", settings["logconfig_dict"])
    cfg.set("accesslog", settings["accesslog"])
    return QuietAccessLogger(cfg)


def test_gunicorn_conf_names_the_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DIR", str(CONF.parent))
    name = runpy.run_path(str(CONF))["logger_class"]
    assert load_class(name, section="gunicorn.loggers") is QuietAccessLogger


@pytest.mark.parametrize("access_log", [False, True])
def test_line_built_only_when_written(monkeypatch: pytest.MonkeyPatch, access_log: bool) -> None:
    logger = _logger(monkeypatch, access_log)
    assert logger.access_log_enabled  # gunicorn alone would build every line

    def atoms(*args: object) -> dict[str, str]:
        raise Built

    monkeypatch.setattr(logger, "atoms", atoms)
    assert logger.access_log.isEnabledFor(logging.INFO) is access_log
    if access_log:
        with pytest.raises(Built):
            logger.access(None, None, {}, None)
    else:
        logger.access(None, None, {}, None)  # returns before building anything
