"""Every tunable of the server, read once from the environment into one frozen `Settings`.

Why one table: operators configure Cloud Run with env vars only, so each knob must have a name,
a default, a range and a line in docs/configuration.md. `ENV_VARS` is that table; a test checks
the doc lists exactly these names, so the two cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """Raised with every invalid variable listed, so one restart fixes them all."""


def default_model_dir() -> Path:
    """The repo's shipped `models/`; an installed (non-editable) package falls back to ./models."""
    shipped = _REPO_ROOT / "models"
    return shipped if shipped.is_dir() else Path.cwd() / "models"


@dataclass(frozen=True)
class EnvVar:
    """One row of the configuration table: env name, Settings field, parser and documentation."""

    name: str
    field: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("must be a non-empty host name or address")
    return value


def _sha256_hex(raw: str) -> str | None:
    value = raw.strip().lower()
    if not value:
        return None
    if len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
        raise ValueError("must be empty or 64 hex digits (the sha256 of the token)")
    return value


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must not be empty")
    return Path(raw.strip()).expanduser()


def _optional_path(raw: str) -> Path | None:
    """Empty means "off" (e.g. no shadow model)."""
    return Path(raw.strip()).expanduser() if raw.strip() else None


# Never echoed in errors or logs: an operator may paste the token where its hash belongs.
SECRET_VARS = frozenset({"AUTH_TOKEN_HASH"})

ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("HOST", "host", _host, "0.0.0.0", "Address gunicorn binds to."),
    EnvVar("PORT", "port", _int_in(1, 65535), 8080, "TCP port (Cloud Run sets it)."),
    EnvVar(
        "MODEL_DIR",
        "model_dir",
        _path,
        None,
        "Directory of bundles (one sub-directory per bundle). Default: the repo's `models/`, "
        "or `./models` when the package is installed elsewhere.",
    ),
    EnvVar(
        "WEB_WORKERS",
        "web_workers",
        _int_in(1, 64),
        1,
        "gunicorn worker processes. One per vCPU; each holds its own copy of the models.",
    ),
    EnvVar(
        "WEB_THREADS",
        "web_threads",
        _int_in(1, 256),
        8,
        "Requests per worker admitted at once; past it POSTs get 503 + Retry-After at once.",
    ),
    EnvVar(
        "ORT_INTRA_OP_THREADS",
        "ort_intra_op_threads",
        _int_in(1, 64),
        1,
        "onnxruntime intra-op threads per session (1 on a one-vCPU instance; spinning is off).",
    ),
    EnvVar(
        "ORT_INTER_OP_THREADS",
        "ort_inter_op_threads",
        _int_in(1, 64),
        1,
        "onnxruntime inter-op threads per session (only used by parallel execution).",
    ),
    EnvVar(
        "GRACEFUL_TIMEOUT_S",
        "graceful_timeout_s",
        _int_in(0, 9),
        8,
        "Seconds in-flight requests get after SIGTERM; below Cloud Run's 10 s window.",
    ),
    EnvVar(
        "MAX_BODY_BYTES",
        "max_body_bytes",
        _int_in(64, 64 * 1024 * 1024),
        1024 * 1024,
        "Largest request body accepted; larger bodies get 413.",
    ),
    EnvVar(
        "MAX_TEXT_CHARS",
        "max_text_chars",
        _int_in(1, 10_000_000),
        20_000,
        "Longest text (review or prompt) in characters; longer ones get 400.",
    ),
    EnvVar(
        "MAX_BATCH_TEXTS",
        "max_batch_texts",
        _int_in(1, 10_000),
        64,
        "Most texts in one `/classify` batch.",
    ),
    EnvVar(
        "MAX_N_WORDS",
        "max_n_words",
        _int_in(1, 100_000),
        200,
        "Largest `n_words` (tokens generated per sample) for `/generate`.",
    ),
    EnvVar(
        "MAX_N_SAMPLES",
        "max_n_samples",
        _int_in(1, 1_000),
        10,
        "Largest `n_samples` for `/generate`.",
    ),
    EnvVar("LOG_LEVEL", "log_level", _choice(LOG_LEVELS), "info", "Log level of the JSON logs."),
    EnvVar(
        "ACCESS_LOG",
        "access_log",
        _bool,
        False,
        "Write one gunicorn access-log line per request (Cloud Run logs requests already).",
    ),
    EnvVar(
        "REQUEST_TIMEOUT_S",
        "request_timeout_s",
        _float_in(0.1, 3600.0),
        30.0,
        "Deadline of one request's model work; past it the work stops and the answer is 504.",
    ),
    EnvVar(
        "CLASSIFY_RUNS",
        "classify_runs",
        _int_in(1, 256),
        1,
        "Classifier onnxruntime runs at once per worker; more requests wait their turn within "
        "their deadline. Activation memory grows with review length x runs at once; on one "
        "vCPU, one at a time costs no throughput (BENCHMARKS.md).",
    ),
    EnvVar(
        "CLASSIFY_MAX_TOKENS",
        "classify_max_tokens",
        _int_in(64, 10_000_000),
        4096,
        "Most padded tokens (rows x longest row) in one classifier onnxruntime run; a batch "
        "(one request's or coalesced) is split into runs under it, a longer single text runs "
        "alone. Bounds a run's activation memory.",
    ),
    EnvVar(
        "MICROBATCH",
        "microbatch",
        _bool,
        True,
        "Coalesce concurrent /classify requests into one onnxruntime call (on: +15% throughput "
        "at concurrency 8 on one core with the shipped model, p50 at concurrency 1 unchanged; "
        "BENCHMARKS.md).",
    ),
    EnvVar(
        "MICROBATCH_MAX_TEXTS",
        "microbatch_max_texts",
        _int_in(1, 10_000),
        64,
        "Most texts in one coalesced /classify call.",
    ),
    EnvVar(
        "MICROBATCH_WAIT_MS",
        "microbatch_wait_ms",
        _float_in(0.0, 1000.0),
        0.0,
        "How long a coalesced call waits for more requests (0: only those already waiting).",
    ),
    EnvVar(
        "AUTH_TOKEN_HASH",
        "auth_token_hash",
        _sha256_hex,
        None,
        "sha256 (hex) of the bearer token required on every route but the health probes; "
        "empty: no auth (Cloud Run IAM).",
    ),
    EnvVar(
        "REQUEST_LOG",
        "request_log",
        _bool,
        True,
        "One JSON log line per request: severity, request id, latency, model (never the text).",
    ),
    EnvVar(
        "DRIFT_WINDOW",
        "drift_window",
        _int_in(10, 1_000_000),
        1000,
        "Drift compares the last this-many classified texts with the bundle's reference.",
    ),
    EnvVar(
        "DRIFT_MIN_DOCUMENTS",
        "drift_min_documents",
        _int_in(1, 1_000_000),
        100,
        "Texts the drift window needs before a score is reported.",
    ),
    EnvVar(
        "SHADOW_MODEL_DIR",
        "shadow_model_dir",
        _optional_path,
        None,
        "A candidate classify bundle run in shadow on /classify traffic; empty: off.",
    ),
    EnvVar(
        "SHADOW_FRACTION",
        "shadow_fraction",
        _float_in(0.0, 1.0),
        0.1,
        "Share of /classify requests also sent to the shadow candidate.",
    ),
    EnvVar(
        "SHADOW_QUEUE",
        "shadow_queue",
        _int_in(1, 10_000),
        16,
        "Shadow jobs waiting at most; more are dropped (counted), never queued.",
    ),
    EnvVar(
        "WARMUP_DELAY_S",
        "warmup_delay_s",
        _float_in(0.0, 600.0),
        0.0,
        "Seconds to wait before the warm-up inference (testing /readyz; keep 0 in production).",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The server's configuration; build it with `Settings.from_env()` (or directly in tests)."""

    host: str = "0.0.0.0"
    port: int = 8080
    model_dir: Path = field(default_factory=default_model_dir)
    web_workers: int = 1
    web_threads: int = 8
    ort_intra_op_threads: int = 1
    ort_inter_op_threads: int = 1
    graceful_timeout_s: int = 8
    max_body_bytes: int = 1024 * 1024
    max_text_chars: int = 20_000
    max_batch_texts: int = 64
    max_n_words: int = 200
    max_n_samples: int = 10
    log_level: str = "info"
    access_log: bool = False
    request_timeout_s: float = 30.0
    classify_runs: int = 1
    classify_max_tokens: int = 4096
    microbatch: bool = True
    microbatch_max_texts: int = 64
    microbatch_wait_ms: float = 0.0
    auth_token_hash: str | None = None
    request_log: bool = True
    drift_window: int = 1000
    drift_min_documents: int = 100
    shadow_model_dir: Path | None = None
    shadow_fraction: float = 0.1
    shadow_queue: int = 16
    warmup_delay_s: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable of `ENV_VARS`; raise ConfigError naming all bad ones at once."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for var in ENV_VARS:
            raw = env.get(var.name)
            if raw is None:
                values[var.field] = default_model_dir() if var.field == "model_dir" else var.default
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError as exc:
                shown = "(value hidden)" if var.name in SECRET_VARS else repr(raw)
                problems.append(f"{var.name}={shown}: {exc}")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """Settings as JSON-friendly values, for the startup log line."""
        shown = {
            f.name: str(getattr(self, f.name)) if f.name == "model_dir" else getattr(self, f.name)
            for f in fields(self)
        }
        shown["auth_token_hash"] = "set" if self.auth_token_hash else None  # not even a hash
        return shown


@lru_cache(maxsize=1)
def process_settings() -> Settings:
    """This process's Settings: the environment is read once, however many modules ask
    (`python -m server`, gunicorn.conf.py and server.wsgi all run in the gunicorn master)."""
    return Settings.from_env()
