"""Every tunable of the server, declared once: each `Settings` field carries its env var, parser,
default and documentation, and everything else derives from it.

Why one declaration: operators configure Cloud Run with env vars only, so each knob needs a name,
a default, a range and a line in docs/configuration.md. `ENV_VARS` (the table that parses and
validates) and the table in docs/configuration.md (`python -m server.config` prints it; a test
fails when the page differs) are read off the fields below, so none of them can drift apart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

_REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
T = TypeVar("T")


class ConfigError(ValueError):
    """Raised with every invalid variable listed, so one restart fixes them all."""


def default_model_dir() -> Path:
    """The repo's shipped `models/`; an installed (non-editable) package falls back to ./models."""
    shipped = _REPO_ROOT / "models"
    return shipped if shipped.is_dir() else Path.cwd() / "models"


class Parser(Generic[T]):
    """Text of an env var -> value (ValueError with the reason); `allowed` words the range."""

    allowed = ""

    def __call__(self, raw: str) -> T:
        raise NotImplementedError


class IntIn(Parser[int]):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.allowed = f"{low}-{high}"

    def __call__(self, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
        if not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}")
        return value


class OptionalIntIn(Parser["int | None"]):
    """An IntIn, or empty for "not set" (the default then comes from elsewhere, said in the doc)."""

    def __init__(self, low: int, high: int) -> None:
        self._int = IntIn(low, high)
        self.allowed = f"empty or {self._int.allowed}"

    def __call__(self, raw: str) -> int | None:
        return self._int(raw) if raw.strip() else None


class FloatIn(Parser[float]):
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.allowed = f"{low:g}-{high:g}"

    def __call__(self, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if not self.low <= value <= self.high:  # also rejects nan
            raise ValueError(f"must be between {self.low} and {self.high}")
        return value


class Bool(Parser[bool]):
    allowed = "true/false, 1/0, yes/no, on/off"

    def __call__(self, raw: str) -> bool:
        text = raw.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


BOOL = Bool()


class Choice(Parser[str]):
    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options
        self.allowed = ", ".join(options)

    def __call__(self, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}")
        return value


class Host(Parser[str]):
    allowed = "host or address"

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("must be a non-empty host name or address")
        return value


class Sha256Hex(Parser["str | None"]):
    allowed = "empty or 64 hex digits"

    def __call__(self, raw: str) -> str | None:
        value = raw.strip().lower()
        if not value:
            return None
        if len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
            raise ValueError("must be empty or 64 hex digits (the sha256 of the token)")
        return value


class PathParser(Parser[Path]):
    allowed = "directory"

    def __call__(self, raw: str) -> Path:
        if not raw.strip():
            raise ValueError("must not be empty")
        return Path(raw.strip()).expanduser()


class OptionalPath(Parser["Path | None"]):
    """Empty means "off" (e.g. no shadow model)."""

    allowed = "empty or directory"

    def __call__(self, raw: str) -> Path | None:
        return Path(raw.strip()).expanduser() if raw.strip() else None


class OptionalName(Parser["str | None"]):
    """A bundle name (manifest `name`); empty means "not set"."""

    allowed = "empty or a bundle name"

    def __call__(self, raw: str) -> str | None:
        value = raw.strip()
        if value and any(ch.isspace() or ch == "/" for ch in value):
            raise ValueError("must be a bundle name (no spaces or slashes)")
        return value or None


@dataclass(frozen=True)
class EnvVar:
    """One row of the configuration table: env name, Settings field, parser, default, doc."""

    name: str
    field: str
    parse: Parser[Any]
    default: Any
    doc: str

    def default_text(self) -> str:
        """The default as docs/configuration.md shows it."""
        if self.field == "model_dir":
            return "repo `models/`"
        if self.default is None:
            return "`none`"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        return f"`{self.default}`"


def env(name: str, parse: Parser[Any], doc: str, default: Any = None) -> dict[str, EnvVar]:
    """A field's metadata: the env var that sets it (its field name is filled in below)."""
    return {"env": EnvVar(name, "", parse, default, doc)}


def setting(name: str, parse: Parser[T], default: T, doc: str) -> T:
    """A Settings field set by env var `name` (typed as its value, for the type checker)."""
    made: Any = field(default=default, metadata=env(name, parse, doc, default))
    return made


# Never echoed in errors or logs: an operator may paste the token where its hash belongs.
SECRET_VARS = frozenset({"AUTH_TOKEN_HASH"})


@dataclass(frozen=True)
class Settings:
    """The server's configuration; build it with `Settings.from_env()` (or directly in tests)."""

    host: str = setting(
        "HOST",
        Host(),
        "0.0.0.0",
        "Address gunicorn binds to (tests use `127.0.0.1`).",
    )
    port: int = setting(
        "PORT",
        IntIn(1, 65535),
        8080,
        "TCP port (Cloud Run sets it).",
    )
    model_dir: Path = field(
        default_factory=default_model_dir,
        metadata=env(
            "MODEL_DIR",
            PathParser(),
            "Directory of bundles, one sub-directory each, any number per task (see "
            '`docs/bundle-format.md`); requests pick one by name with `"model"`. Default: '
            "the repo's `models/`, or `./models` when the package is installed outside the repo.",
        ),
    )
    default_classifier: str | None = setting(
        "DEFAULT_CLASSIFIER",
        OptionalName(),
        None,
        "The classify bundle (manifest `name`) that answers `/classify` when a request names no "
        '`"model"`. Needed when MODEL_DIR holds several classifiers (the server refuses to '
        "start without it, naming them); with one, that one is the default.",
    )
    default_lm: str | None = setting(
        "DEFAULT_LM",
        OptionalName(),
        None,
        "The language model bundle that answers `/generate` (and the demo page) when a request "
        'names no `"model"`; needed when MODEL_DIR holds several, as `DEFAULT_CLASSIFIER`.',
    )
    web_workers: int = setting(
        "WEB_WORKERS",
        IntIn(1, 64),
        1,
        "gunicorn worker processes. One per vCPU; each worker serves with its own copy of the "
        "models.",
    )
    web_threads: int = setting(
        "WEB_THREADS",
        IntIn(1, 256),
        8,
        "Requests one worker admits at once (running or waiting for the CPU). One more POST is "
        "answered `503` with `Retry-After: 1` at once, never queued; GETs (probes, `/models`, "
        "`/metrics`) are always answered. gunicorn runs 4 threads more than this so probes and "
        "the 503s never wait behind model work. Equal to Cloud Run's concurrency.",
    )
    ort_intra_op_threads: int = setting(
        "ORT_INTRA_OP_THREADS",
        IntIn(1, 64),
        1,
        "onnxruntime intra-op threads per session. 1 on a one-vCPU instance; spin-waiting is "
        "always off.",
    )
    ort_inter_op_threads: int = setting(
        "ORT_INTER_OP_THREADS",
        IntIn(1, 64),
        1,
        "onnxruntime inter-op threads per session (used only by parallel execution).",
    )
    graceful_timeout_s: int = setting(
        "GRACEFUL_TIMEOUT_S",
        IntIn(0, 9),
        8,
        "Whole seconds in-flight requests get after SIGTERM; inside Cloud Run's 10 s window.",
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES",
        IntIn(64, 64 * 1024 * 1024),
        1024 * 1024,
        "Largest request body; larger bodies (declared by Content-Length or actually sent) get "
        "413.",
    )
    max_text_chars: int = setting(
        "MAX_TEXT_CHARS",
        IntIn(1, 10_000_000),
        20_000,
        "Longest text (review, prompt or text to tokenize) in characters; longer ones get 400. "
        "The longest IMDB review has about 13,700.",
    )
    max_batch_texts: int = setting(
        "MAX_BATCH_TEXTS",
        IntIn(1, 10_000),
        64,
        "Most texts in one `/classify` batch.",
    )
    max_n_words: int = setting(
        "MAX_N_WORDS",
        IntIn(1, 100_000),
        200,
        "Largest `n_words` (tokens generated per sample) for `/generate`.",
    )
    max_n_samples: int = setting(
        "MAX_N_SAMPLES",
        IntIn(1, 1_000),
        10,
        "Largest `n_samples` for `/generate`.",
    )
    log_level: str = setting(
        "LOG_LEVEL",
        Choice(LOG_LEVELS),
        "info",
        "Level of the JSON logs (stderr, one object per line).",
    )
    access_log: bool = setting(
        "ACCESS_LOG",
        BOOL,
        False,
        "One gunicorn access-log line per request (Cloud Run already logs requests).",
    )
    request_timeout_s: float = setting(
        "REQUEST_TIMEOUT_S",
        FloatIn(0.1, 3600.0),
        30.0,
        "Deadline of one request, from admission. Past it the model work is stopped (onnxruntime "
        "run terminated, generation loop left) and the answer is `504`; a stream ends with an "
        "`error` event. Keep it below Cloud Run's request timeout (60 s).",
    )
    classify_runs: int = setting(
        "CLASSIFY_RUNS",
        IntIn(1, 256),
        1,
        "Classifier onnxruntime runs at once per worker; more requests wait their turn within "
        "their deadline (then 504). A run's activation memory grows with the review's length and "
        "concurrent runs add up (before this bound, 8 concurrent long reviews took one process "
        "from 112 to 409 MiB); on one vCPU one at a time costs no throughput.",
    )
    lm_runs: int = setting(
        "LM_RUNS",
        IntIn(1, 256),
        1,
        "Language-model onnxruntime runs (one generation step each) at once per worker; "
        "concurrent generations take turns step by step, waiting within their deadline "
        "(then 504). Measured on one pinned core, shipped models, 8 concurrent /generate 5x40: "
        "worker VmHWM 111 -> 113.3 MiB (LM_RUNS 8: 116-118) and all 8 done in 1.0 s (LM_RUNS 8: "
        "1.7-2.0 s); c=1 latency unchanged.",
    )
    classify_max_tokens: int | None = setting(
        "CLASSIFY_MAX_TOKENS",
        OptionalIntIn(64, 10_000_000),
        None,
        "Most padded tokens in one classifier onnxruntime run; a run's activation memory grows "
        "with them (~21 KiB each for the shipped size), and the session's arena keeps the "
        "largest run's for the process's life. Unset: per bundle, from its graph layout "
        "(bundle/classifier_rows.py): 256 for chunked graphs, which take texts in time chunks with the "
        "state carried (rows × chunk ≤ the budget, however long the texts; a text that has ended "
        "leaves the batch), 2048 for whole-sequence graphs (bundles exported before chunking), "
        "whose batches are split into runs of rows × longest row ≤ the budget, shortest texts "
        "first, a longer text alone. Measured (server on one pinned core, shipped-size "
        "classifier, chunked): peak PSS under the memory load 140-147 MiB at 256, 156-168 at "
        "512 and 384, 128-143 at 128; per review at 256 vs 512 the same for median reviews "
        "alone and for 8 long ones together, +1-3 ms of ~72 for a long review alone.",
    )
    microbatch: bool = setting(
        "MICROBATCH",
        BOOL,
        True,
        "Coalesce concurrent `/classify` requests into one onnxruntime call. On: with the shipped "
        "classifier (hidden 768) on one core, median reviews at concurrency 8, server CPU per "
        "request 23.4 -> 14.7 ms (about 1.6x the throughput), p50 at concurrency 1 unchanged "
        "(`python -m benchmarks.microbatch --chars 894-1043`). The session's cost per review "
        "falls from 21.2 ms alone to 14.1 at 2 rows and 12.1 at 4, then stays there (12.5 at 8 "
        "and 16): past 4 rows the int8 matrix products are compute-bound. With the smaller "
        "compact model it had lowered throughput (38.1 -> 25.3 req/s, before `CLASSIFY_RUNS`): "
        "re-measure for another model.",
    )
    microbatch_max_texts: int = setting(
        "MICROBATCH_MAX_TEXTS",
        IntIn(1, 10_000),
        64,
        "Most texts in one coalesced `/classify` call (a request is never split; a larger one "
        "runs alone).",
    )
    microbatch_wait_ms: float = setting(
        "MICROBATCH_WAIT_MS",
        FloatIn(0.0, 1000.0),
        0.0,
        "After a call that coalesced several requests, how long the next call waits for as many "
        "to queue (their clients' next requests); after a call of one request nothing waits, so "
        "a lone request is never delayed. 0: a call takes what queued while the previous one "
        "ran. Measured at concurrency 8 (median reviews, one core): mean rows per call 4.3 at 0, "
        "4.8-4.9 at 2 ms, server CPU per request 14.7 vs 14.4 ms: the gain is within noise "
        "because 4 rows already reach the cost plateau.",
    )
    auth_token_hash: str | None = setting(
        "AUTH_TOKEN_HASH",
        Sha256Hex(),
        None,
        'The sha256 (hex) of a bearer token (`printf %s "$TOKEN" | sha256sum`). When set, every '
        "route but `/healthz` and `/readyz` (and `/v2/health/*`) needs `Authorization: Bearer "
        "<token>`, compared in constant time; else `401`. For deployments outside Cloud Run IAM.",
    )
    request_log: bool = setting(
        "REQUEST_LOG",
        BOOL,
        True,
        "One JSON log line per request: `severity`, `request_id`, `latency_s`, `model` "
        "(`name@version`), Cloud Logging's `httpRequest` (path only). Never the request's text. "
        "Probes and `/metrics` log at `debug`. See `docs/monitoring.md`.",
    )
    server_timing: bool = setting(
        "SERVER_TIMING",
        BOOL,
        True,
        "A `Server-Timing` header on every answer: `app` (ms in the app, from the first "
        "middleware to the answer), and where a request did model work `tokenize` and `model` "
        "(onnxruntime runs, with any wait for a run slot or a batch). See `docs/monitoring.md`.",
    )
    drift_window: int = setting(
        "DRIFT_WINDOW",
        IntIn(10, 1_000_000),
        1000,
        "Drift compares the last this-many classified texts with the classifier's "
        "`reference_stats` (PSI per statistic, in `/metrics` and `/models`).",
    )
    drift_min_documents: int = setting(
        "DRIFT_MIN_DOCUMENTS",
        IntIn(1, 1_000_000),
        100,
        "Texts the drift window must hold before a score is reported (fewer give noisy PSI).",
    )
    shadow_model_dir: Path | None = setting(  # noqa: RUF009  (a Field, not a call per instance)
        "SHADOW_MODEL_DIR",
        OptionalPath(),
        None,
        "A candidate classify bundle (the bundle itself or a folder holding exactly one) that "
        "runs in shadow on `/classify` traffic after the answer is sent; agreement and latency "
        "become metrics. Verified like `MODEL_DIR`: a bad one stops the server (exit 3).",
    )
    shadow_fraction: float = setting(
        "SHADOW_FRACTION",
        FloatIn(0.0, 1.0),
        0.1,
        "Share of `/classify` requests (and v2 classifier calls) also sent to the shadow "
        "candidate.",
    )
    shadow_queue: int = setting(
        "SHADOW_QUEUE",
        IntIn(1, 10_000),
        16,
        "Shadow jobs waiting at most; further ones are dropped and counted "
        '(`shadow_jobs_total{outcome="dropped"}`), so the candidate never builds a backlog.',
    )
    warmup_delay_s: float = setting(
        "WARMUP_DELAY_S",
        FloatIn(0.0, 600.0),
        0.0,
        "Seconds the worker waits before its warm-up inference. For testing `/readyz`; keep 0 in "
        "production.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse every variable of `ENV_VARS`; raise ConfigError naming all bad ones at once."""
        env_now = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for var in ENV_VARS:
            raw = env_now.get(var.name)
            if raw is None:
                continue  # the field's default
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


ENV_VARS: tuple[EnvVar, ...] = tuple(
    replace(f.metadata["env"], field=f.name) for f in fields(Settings)
)


def markdown_table() -> str:
    """The variable table of docs/configuration.md, from the declaration above."""
    lines = ["| variable | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for var in ENV_VARS:
        cells = (f"`{var.name}`", var.default_text(), var.parse.allowed, var.doc)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def process_settings() -> Settings:
    """This process's Settings: the environment is read once, however many modules ask
    (`python -m server`, gunicorn.conf.py and server.wsgi all run in the gunicorn master)."""
    return Settings.from_env()


if __name__ == "__main__":  # `python -m server.config` prints the table for the docs
    sys.stdout.write(markdown_table() + "\n")
