"""Cold start: process exec -> first successful answer, for both servers, broken into phases.

The clock starts just before the exec (`taskset -c CPU python ...`) and stops when the first
request that the client keeps re-sending gets a 200 with the expected body. Before the port
is open the connection is refused and the client retries every few ms (its own core); once the
socket listens, a request waits in the accept queue and is answered as soon as the server can.

Phases come from each server's own startup log: ours logs "models loaded" (load_s) in the
gunicorn master and "ready" (warm_up_s) in the worker, each line with its wall-clock time (ms),
whose age is taken from the moment of the exec (the age since exec the lines also carry comes
from /proc in 10 ms steps, used only where a line has no time);
the naive app prints its imports and load_learner times. What is left to the first answer is
"first request". Modules load from bytecode and regexes from their saved compiled form, as in
the image (see `run_cold_starts`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from benchmarks.servers import NAIVE, OURS, RunningServer, ServerFailed, launch

RETRY_S = 0.005

# Phase names in start-up order, per server (what the report and the plot show).
OUR_PHASES = (
    "interpreter + imports",
    "bundle load + sessions",
    "fork worker",
    "warm-up",
    "first request",
)
NAIVE_PHASES = (
    "interpreter + gunicorn + fork",
    "import fastai + torch",
    "load_learner x2",
    "first request",
)


@dataclass(frozen=True)
class ColdProbe:
    """The request that ends a cold start: path, body, the key a good answer holds."""

    kind: str
    path: str
    body: dict[str, Any]
    expect_key: str


def first_success(server: RunningServer, probe: ColdProbe, timeout_s: float) -> float:
    """Seconds from exec to the first 200 carrying `expect_key` (retrying refused connections)."""
    deadline = time.monotonic() + timeout_s
    with requests.Session() as session:
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                response = session.post(
                    server.base_url + probe.path,
                    json=probe.body,
                    timeout=max(1.0, deadline - time.monotonic()),
                )
                elapsed = time.perf_counter() - server.started
                if response.status_code == 200 and probe.expect_key in response.json():
                    return elapsed
            except requests.ConnectionError:
                pass
            time.sleep(RETRY_S)
    raise server.failure(f"no successful {probe.path} within {timeout_s:.0f} s")


def _find(records: list[dict[str, Any]], message: str) -> dict[str, Any] | None:
    return next((r for r in records if r.get("message") == message), None)


def _age(record: dict[str, Any], started_wall: float | None) -> float | None:
    """Seconds from the exec to a log line: its wall-clock `time` (ms) where there is one and
    the exec's wall-clock moment is known, else its own `since_exec_s` (/proc, 10 ms steps)."""
    stamp = record.get("time")
    if started_wall is not None and isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).timestamp() - started_wall
        except ValueError:
            pass
    age = record.get("since_exec_s")
    return float(age) if age is not None else None


def our_phases(
    records: list[dict[str, Any]], total_s: float, started_wall: float | None = None
) -> dict[str, float] | None:
    """Phase durations (s) of our server from its startup log, or None if a line is missing."""
    loaded, ready = _find(records, "models loaded"), _find(records, "ready")
    if not loaded or not ready:
        return None
    loaded_at, ready_at = _age(loaded, started_wall), _age(ready, started_wall)
    if loaded_at is None or ready_at is None:
        return None
    load_s, warm_s = float(loaded["load_s"]), float(ready["warm_up_s"])
    return dict(
        zip(
            OUR_PHASES,
            (
                max(0.0, loaded_at - load_s),
                load_s,
                max(0.0, ready_at - warm_s - loaded_at),
                warm_s,
                max(0.0, total_s - ready_at),
            ),
            strict=False,
        )
    )


def naive_phases(records: list[dict[str, Any]], total_s: float) -> dict[str, float] | None:
    loaded = _find(records, "naive app loaded")
    if (
        not loaded
        or loaded.get("since_exec_s") is None
        or loaded.get("app_import_since_exec_s") is None
    ):
        return None
    loaded_at = float(loaded["since_exec_s"])
    return dict(
        zip(
            NAIVE_PHASES,
            (
                float(loaded["app_import_since_exec_s"]),
                float(loaded["imports_s"]),
                float(loaded["load_s"]),
                max(0.0, total_s - loaded_at),
            ),
            strict=False,
        )
    )


def cold_start_once(
    name: str,
    probe: ColdProbe,
    run_dir: Path,
    models: Path,
    log_dir: Path,
    cpu: int | None,
    timeout_s: float,
) -> dict[str, Any]:
    """One cold start of one server; the server is stopped (SIGTERM) before returning."""
    server = launch(name, run_dir, models, log_dir, cpu)
    try:
        total_s = first_success(server, probe, timeout_s)
    finally:
        exit_code = server.stop()
    records = server.log_records()
    phases = (
        our_phases(records, total_s, server.started_wall)
        if name == OURS
        else naive_phases(records, total_s)
    )
    if name == OURS and exit_code != 0:
        raise ServerFailed(
            f"our server exited {exit_code} after SIGTERM:\n{server.log_text()[-3000:]}"
        )
    return {
        "server": name,
        "kind": probe.kind,
        "total_s": round(total_s, 4),
        "phases_s": {k: round(v, 4) for k, v in phases.items()} if phases else None,
        "exit_code": exit_code,
    }


def run_cold_starts(
    probes: list[ColdProbe],
    runs: int,
    run_dir: Path,
    models: Path,
    log_dir: Path,
    cpu: int | None,
    timeout_s: float,
    progress: Any = print,
) -> list[dict[str, Any]]:
    """`runs` cold starts per server and probe, interleaved (ours, naive, ours, ...) so slow
    drift on a shared machine lands on both servers alike. Each server first starts once
    untimed: that start writes its bytecode and our tokenizers' compiled regexes
    (bundle/pattern_cache.py) under benchmarks/servers.py BYTECODE_DIR, as an image build does
    (compileall, bundle.verify), so the timed starts load the way a deployed server does."""
    for name in (OURS, NAIVE):
        for probe in probes:
            cold_start_once(name, probe, run_dir, models, log_dir, cpu, timeout_s)
        progress(f"  cold start: {name} started once untimed (bytecode written)")
    results = []
    for index in range(runs):
        for probe in probes:
            for name in (OURS, NAIVE):
                row = cold_start_once(name, probe, run_dir, models, log_dir, cpu, timeout_s)
                row["run"] = index
                results.append(row)
                progress(
                    f"  cold start {index + 1}/{runs} {name:5s} -> first /{probe.kind}: "
                    f"{row['total_s']:.3f} s"
                )
    return results
