"""server/config.py: parsing, validation messages, and the doc table kept in step with the code."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from server.config import ENV_VARS, ConfigError, Settings, default_model_dir, markdown_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_doc_table_is_the_declaration() -> None:
    """docs/configuration.md holds exactly the table `python -m server.config` prints."""
    doc = DOC.read_text(encoding="utf-8")
    table = markdown_table()
    assert table in doc, "docs/configuration.md is out of step: paste `python -m server.config`"
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == [v.name for v in ENV_VARS]


def test_every_setting_has_an_env_var_with_a_doc_and_its_default() -> None:
    """Settings' defaults and ENV_VARS are one declaration: they cannot disagree."""
    defaults = Settings()
    assert [var.field for var in ENV_VARS] == [f.name for f in fields(Settings)]
    for var in ENV_VARS:
        assert var.doc.strip() and var.parse.allowed, var.name
        if var.field != "model_dir":
            assert getattr(defaults, var.field) == var.default, var.name


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.port, settings.web_workers, settings.web_threads) == (8080, 1, 8)
    assert (settings.ort_intra_op_threads, settings.ort_inter_op_threads) == (1, 1)
    assert settings.graceful_timeout_s < 10
    assert settings.model_dir == default_model_dir()


def test_values_are_parsed_and_typed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "PORT": " 9001 ",
            "MODEL_DIR": str(tmp_path),
            "WEB_THREADS": "3",
            "MAX_BODY_BYTES": "4096",
            "LOG_LEVEL": "DEBUG",
            "ACCESS_LOG": "yes",
            "GRACEFUL_TIMEOUT_S": "2",
            "WARMUP_DELAY_S": "0.5",
        }
    )
    assert settings.port == 9001 and settings.model_dir == tmp_path
    assert settings.web_threads == 3 and settings.max_body_bytes == 4096
    assert settings.log_level == "debug" and settings.access_log is True
    assert settings.graceful_timeout_s == 2 and settings.warmup_delay_s == 0.5


@pytest.mark.parametrize(
    "name,value",
    [
        ("PORT", "0"),
        ("PORT", "http"),
        ("PORT", "70000"),
        ("WEB_WORKERS", "0"),
        ("MAX_BODY_BYTES", "-1"),
        ("GRACEFUL_TIMEOUT_S", "10"),
        ("GRACEFUL_TIMEOUT_S", "2.5"),
        ("LOG_LEVEL", "loud"),
        ("ACCESS_LOG", "maybe"),
        ("MODEL_DIR", " "),
        ("HOST", ""),
        ("MAX_N_SAMPLES", "1.5"),
    ],
)
def test_invalid_values_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"PORT": "x", "MAX_TEXT_CHARS": "0", "LOG_LEVEL": "?"})
    message = str(caught.value)
    assert all(name in message for name in ("PORT", "MAX_TEXT_CHARS", "LOG_LEVEL"))


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]
