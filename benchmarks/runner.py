"""One benchmark run: both servers, side by side, every section, into one results dict.

Order: cold starts (interleaved ours/naive), then each server alone under load (ours, then
naive), then the in-process timings, footprint and image record. The servers run pinned to
`server_cpu`; this process (the load generator) pins itself to `client_cpu` when the machine has
a second core, so the client never competes with the server for its core.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import footprint, image, microbatch, paired
from benchmarks.coldstart import ColdProbe, run_cold_starts
from benchmarks.inputs import Inputs, default_imdb_dir, pick_inputs
from benchmarks.loadgen import Workload, run_load
from benchmarks.memory import MemorySampler
from benchmarks.servers import (
    NAIVE,
    ONE_THREAD,
    OURS,
    REPO,
    base_env,
    launch,
    pin_client,
    pinned,
    wait_ready,
)
from export.progress import Progress


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of a run. Each latency cell is bounded by a request count, a time after which
    no request starts, and a predicted-duration cap (see `plan_cell`)."""

    run_dir: Path
    models: Path
    imdb_dir: Path = field(default_factory=default_imdb_dir)
    results_dir: Path = REPO / "benchmarks" / "results"
    report_path: Path = REPO / "BENCHMARKS.md"
    quick: bool = False
    cold_runs: int = 5
    concurrency: tuple[int, ...] = (1, 4, 8)
    classify_requests: int = 200  # per cell, upper bound (the time budget usually ends naive cells)
    generate_requests: int = 40
    cell_seconds: float = 15.0  # no new request starts after this (in-flight ones finish)
    # A cell whose predicted wall time (cell_seconds + c requests in flight, at the service time
    # measured just before) exceeds this is skipped and reported as such, never run unbounded.
    cell_max_seconds: float = 120.0
    reviews_per_band: int = 20
    prompts: int = 8
    n_words: int = 40
    generate_samples: tuple[int, ...] = (1, 5)
    raw_repeats: int = 5
    server_cpu: int | None = 0
    client_cpu: int | None = 1
    fresh_venv: bool = False  # a fresh pip install took ~4 min here (downloads): opt-in
    microbatch_seconds: float = 10.0  # per setting, round and concurrency
    microbatch_rounds: int = 2
    paired_rounds: int = 3  # passes over the median reviews, HTTP and bare session interleaved
    image: bool = True  # build and weigh the shipped image (benchmarks/image.py; needs podman)
    ready_timeout_s: float = 300.0
    command: str = ""

    @classmethod
    def quick_defaults(cls) -> dict[str, Any]:
        """Small counts for the harness test: every section, minimal statistics."""
        return {
            "quick": True,
            "cold_runs": 2,
            "classify_requests": 8,
            "generate_requests": 3,
            "cell_seconds": 3.0,
            "cell_max_seconds": 30.0,
            "reviews_per_band": 4,
            "prompts": 2,
            "n_words": 10,
            "raw_repeats": 2,
            "microbatch_seconds": 2.0,
            "microbatch_rounds": 1,
            "paired_rounds": 1,
        }


def log(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine facts
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    import importlib.metadata as metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            n: _version(n)
            for n in ("onnxruntime", "numpy", "falcon", "gunicorn", "torch", "fastai", "spacy")
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def bundles(models: Path) -> dict[str, Any]:
    out = {}
    for path in sorted(models.glob("*/manifest.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        arch = raw.get("architecture", {})
        out[raw["name"]] = {
            "version": raw.get("version"),
            "task": raw.get("task"),
            "quantization": raw.get("model", {}).get("quantization"),
            "format": raw.get("model", {}).get("format", "onnx"),
            "model_bytes": (path.parent / raw["model"]["file"]).stat().st_size,
            **{
                k: arch.get(k)
                for k in ("vocab_size", "emb_size", "hidden_size", "n_layers", "max_len")
            },
        }
    return out


# ----------------------------------------------------------------------------- workloads
FLOOR = Workload("readyz (no model)", "/readyz", [None], "status")


def classify_workloads(inputs: Inputs) -> list[Workload]:
    return [
        Workload(f"classify {band}", "/classify", [{"text": t} for t in texts], "label")
        for band, texts in inputs.reviews.items()
    ]


def generate_workloads(inputs: Inputs, cfg: BenchConfig) -> list[Workload]:
    return [
        Workload(
            f"generate {k}x{cfg.n_words}",
            "/generate",
            [
                {"prompt": p, "n_words": cfg.n_words, "n_samples": k, "seed": i}
                for i, p in enumerate(inputs.prompts)
            ],
            "samples",
        )
        for k in cfg.generate_samples
    ]


def cold_probes(inputs: Inputs, cfg: BenchConfig) -> list[ColdProbe]:
    return [
        ColdProbe("classify", "/classify", {"text": inputs.reviews["median"][0]}, "label"),
        ColdProbe(
            "generate",
            "/generate",
            {"prompt": inputs.prompts[0], "n_words": cfg.n_words, "n_samples": 1, "seed": 0},
            "samples",
        ),
    ]


# ----------------------------------------------------------------------------- load phase
def predicted_cell_s(
    concurrency: int, max_requests: int, cell_seconds: float, service_s: float
) -> float:
    """Wall time a closed-loop cell should take on a server that does one request at a time
    (one core): new requests stop at `cell_seconds`, but the `concurrency` requests in flight
    then still finish one after another; and never more than all requests back to back."""
    return min(cell_seconds + concurrency * service_s, max(max_requests, concurrency) * service_s)


def run_cells(
    base_url: str,
    workload: Workload,
    levels: tuple[int, ...],
    max_requests: int,
    cell_seconds: float,
    cell_max_seconds: float,
    keep_level: int | None = None,
    progress: Callable[[str], None] | None = None,
    label: str = "",
    on_cell: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, Any]]:
    """Warm `workload` (two requests, one at a time, which also measures its service time),
    then one cell per concurrency level, lowest first. A level whose predicted duration exceeds
    `cell_max_seconds` is skipped (with the prediction) instead of run. Returns (cell summaries
    with their samples, skipped cells, {body index: answer} kept at `keep_level`). `on_cell` is
    called after each level, run or skipped."""
    warm = run_load(base_url, workload, 1, min(2, len(workload.bodies)), 600)
    if warm.errors:
        raise RuntimeError(f"warm-up of {workload.name} failed: {warm.error_examples}")
    service_s = warm.wall_s / max(1, warm.completed)
    cells: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    answers: dict[int, Any] = {}
    for concurrency in sorted(levels):
        predicted = predicted_cell_s(concurrency, max_requests, cell_seconds, service_s)
        if predicted > cell_max_seconds:
            skipped.append(
                {
                    "workload": workload.name,
                    "concurrency": concurrency,
                    "service_s": round(service_s, 3),
                    "predicted_s": round(predicted, 1),
                    "cell_max_seconds": cell_max_seconds,
                }
            )
            if progress:
                progress(
                    f"  {label:5s} {workload.name:18s} c={concurrency}: skipped (predicted "
                    f"{predicted:.0f} s at {service_s:.2f} s per request > "
                    f"{cell_max_seconds:.0f} s)"
                )
            if on_cell:
                on_cell()
            continue
        keep = concurrency == keep_level
        result = run_load(
            base_url, workload, concurrency, max_requests, cell_seconds, keep_answers=keep
        )
        if keep:
            answers = dict(zip(result.body_index, result.answers, strict=False))
        summary = result.summary()
        summary["samples_ms"] = [round(x, 3) for x in result.latencies_ms]
        summary["predicted_s"] = round(predicted, 1)
        cells.append(summary)
        if progress:
            progress(
                f"  {label:5s} {workload.name:18s} c={concurrency}: n={summary['n']} "
                f"p50={summary['p50_ms']} ms p95={summary['p95_ms']} ms "
                f"{summary['throughput_rps']} req/s errors={summary['errors']} "
                f"({summary['wall_s']:.1f} s, predicted {predicted:.1f} s)"
            )
        if result.completed:  # on one core, 1 / throughput is the time one request holds it
            service_s = result.wall_s / result.completed
        if on_cell:
            on_cell()
    return cells, skipped, answers


def cell_count(cfg: BenchConfig, workloads: list[Workload]) -> int:
    """Cells one server runs: the floor at the lowest level, every other workload at each."""
    return sum(1 if w is FLOOR else len(cfg.concurrency) for w in workloads)


def serve_under_load(
    name: str,
    cfg: BenchConfig,
    workloads: list[Workload],
    log_dir: Path,
    cells_bar: Progress | None = None,
    paired_texts: Sequence[str] = (),
) -> dict[str, Any]:
    """Start one server, warm each workload, run every concurrency level, read its memory; with
    `paired_texts`, then the overhead paired with the bare session (benchmarks/paired.py)."""
    server = launch(name, cfg.run_dir, cfg.models, log_dir, cfg.server_cpu)
    cells: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    answers: dict[str, dict[int, Any]] = {}
    low = min(cfg.concurrency)
    try:
        ready_s = wait_ready(server, cfg.ready_timeout_s)
        log(f"{name} ready after {ready_s:.2f} s")
        with MemorySampler(server.pid) as sampler:
            for workload in workloads:
                budget = (
                    cfg.generate_requests if workload.path == "/generate" else cfg.classify_requests
                )
                # The floor (a GET that does no model work) only matters one request at a time.
                levels = (low,) if workload is FLOOR else cfg.concurrency
                try:
                    done, cut, kept = run_cells(
                        server.base_url,
                        workload,
                        levels,
                        budget,
                        cfg.cell_seconds,
                        cfg.cell_max_seconds,
                        low if workload.path == "/classify" else None,
                        log,
                        name,
                        cells_bar.update if cells_bar else None,
                    )
                except RuntimeError as exc:
                    raise server.failure(str(exc)) from None
                if kept:
                    answers[workload.name] = kept
                cells += done
                skipped += [{**row, "server": name} for row in cut]
        memory = sampler.finish()  # VmHWM is read from the live processes, before SIGTERM
        paired_overhead = (
            paired.measure(
                server.base_url, cfg.models, paired_texts, cfg.server_cpu, cfg.paired_rounds
            )
            if paired_texts
            else None
        )
    finally:
        exit_code = server.stop()
    return {
        "ready_s": round(ready_s, 3),
        "cells": cells,
        "skipped_cells": skipped,
        "memory": memory,
        "paired_overhead": paired_overhead,
        "labels": {w: {str(i): a for i, a in sorted(v.items())} for w, v in answers.items()},
        "exit_code": exit_code,
    }


# ----------------------------------------------------------------------------- in-process
def run_inprocess(
    cfg: BenchConfig, inputs: Inputs, workloads: list[Workload], work: Path
) -> dict[str, Any]:
    spec = {
        "reviews": inputs.reviews,
        "generate_bodies": {w.name: list(w.bodies) for w in workloads if w.path == "/generate"},
    }
    spec_path = work / "inprocess-inputs.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = base_env()

    def module(*args: str) -> dict[str, Any]:
        argv = pinned(
            [sys.executable, "-m", "benchmarks.inprocess", *args, "--models", str(cfg.models)],
            cfg.server_cpu,
        )
        out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"benchmarks.inprocess {args[0]} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def interpreter_ms() -> float:
        """A bare interpreter's start: from just before the exec (as a cold start's clock) to
        its first statement, pinned and in the same environment."""
        argv = pinned(
            [sys.executable, "-c", "import time; print(repr(time.time()))"], cfg.server_cpu
        )
        before = time.time()
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
        return round((float(out.stdout) - before) * 1e3, 3)

    raw = module("raw", str(spec_path), "--repeats", str(cfg.raw_repeats))
    startups = [
        {**module("startup"), "interpreter_ms": interpreter_ms()}
        for _ in range(max(1, cfg.cold_runs))
    ]
    return {"raw": raw, "startup_probes": startups}


def run_roofline(cfg: BenchConfig) -> dict[str, Any] | None:
    """benchmarks/roofline.py on the served classifier, pinned to the server's core."""
    classifiers = [
        path.parent
        for path in sorted(cfg.models.glob("*/manifest.json"))
        if json.loads(path.read_text(encoding="utf-8")).get("task") == "classify"
    ]
    if not classifiers:
        return None
    command = [sys.executable, "-m", "benchmarks.roofline", "--bundle", str(classifiers[0])]
    command += ["--repeats", "1" if cfg.quick else "7"]
    argv = pinned(command, cfg.server_cpu)
    out = subprocess.run(
        argv, cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=900
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks.roofline failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure_image(cfg: BenchConfig) -> dict[str, Any]:
    if not cfg.image:
        return {"measured": False, "note": "not measured in this run (--no-image)"}
    try:
        return image.measure(REPO)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return {"measured": False, "note": f"image build failed: {str(exc)[-500:]}"}


# ----------------------------------------------------------------------------- the run
ARCH_KEYS = ("emb_sz", "n_hid", "n_layers")


def check_paths(cfg: BenchConfig) -> dict[str, Any]:
    """Both learners and one bundle per task exist, and the bundles were exported from this run
    (same architecture and vocabulary as its config.json / vocab.json, which export copies into
    each manifest): otherwise the two servers would not serve the same model. Returns, per
    bundle, whether its recorded training config equals the run's whole config.json."""
    problems = [
        f"{p} not found"
        for p in (cfg.run_dir / "classifier.pkl", cfg.run_dir / "lm.pkl")
        if not p.is_file()
    ]
    manifests = {
        p.parent.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(cfg.models.glob("*/manifest.json"))
    }
    tasks = sorted(m["task"] for m in manifests.values())
    if tasks != ["classify", "generate"]:
        problems.append(
            f"{cfg.models} must hold one classify and one generate bundle (has {tasks})"
        )
    provenance: dict[str, Any] = {}
    run_config = _read_json(cfg.run_dir / "config.json")
    vocab = _read_json(cfg.run_dir / "vocab.json")
    for name, manifest in manifests.items():
        recorded = manifest.get("training", {}).get("config") or {}
        differ = [
            k
            for k in ARCH_KEYS
            if run_config is not None and k in recorded and recorded[k] != run_config.get(k)
        ]
        vocab_size = manifest.get("architecture", {}).get("vocab_size")
        if isinstance(vocab, list) and vocab_size is not None and vocab_size != len(vocab):
            differ.append(f"vocab size {vocab_size} vs {len(vocab)}")
        if differ:
            problems.append(
                f"bundle {name} was not exported from {cfg.run_dir} "
                f"(differs in {', '.join(differ)})"
            )
        provenance[name] = {
            "run_dir_recorded": manifest.get("training", {}).get("run_dir"),
            "same_training_config": None if run_config is None else recorded == run_config,
        }
    if problems:
        raise SystemExit("benchmarks: " + "; ".join(problems))
    return provenance


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def probe_host(cfg: BenchConfig, phase: str, started: float) -> dict[str, Any]:
    """benchmarks/hostprobe.py on the server's core: the host's memory speed as this phase
    starts (the report compares phases with it)."""
    argv = pinned([sys.executable, "-m", "benchmarks.hostprobe"], cfg.server_cpu)
    out = subprocess.run(
        argv, cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks.hostprobe failed:\n{out.stderr[-3000:]}")
    reading = json.loads(out.stdout.strip().splitlines()[-1])
    return {"phase": phase, "at_s": round(time.perf_counter() - started, 1), **reading}


def run(cfg: BenchConfig) -> dict[str, Any]:
    provenance = check_paths(cfg)
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    client_cpu = pin_client(cfg.client_cpu if cfg.client_cpu != cfg.server_cpu else None)
    results: dict[str, Any] = {
        "schema": 1,
        "command": cfg.command,
        "started_at": started_at.isoformat(timespec="seconds"),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": machine(),
        "pinning": {
            "server_cpu": cfg.server_cpu,
            "client_cpu": client_cpu,
            "threads_env": ONE_THREAD,
        },
        "bundles": bundles(cfg.models),
        "provenance": provenance,
    }
    log(f"inputs from {cfg.imdb_dir}")
    inputs = pick_inputs(cfg.imdb_dir, cfg.reviews_per_band, cfg.prompts)
    results["inputs"] = {
        "source": inputs.source,
        "test_reviews": inputs.test_reviews,
        "band_chars": inputs.band_chars,
        "reviews_per_band": {b: len(t) for b, t in inputs.reviews.items()},
        "prompts": inputs.prompts,
    }
    workloads = [FLOOR, *classify_workloads(inputs), *generate_workloads(inputs, cfg)]
    probes: list[dict[str, Any]] = results.setdefault("host_probes", [])
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as tmp:
        work = Path(tmp)
        probes.append(probe_host(cfg, "cold starts", started))
        log(f"cold starts: {cfg.cold_runs} runs x 2 probes x 2 servers")
        results["cold_start"] = run_cold_starts(
            cold_probes(inputs, cfg),
            cfg.cold_runs,
            cfg.run_dir,
            cfg.models,
            work / "logs",
            cfg.server_cpu,
            cfg.ready_timeout_s,
            progress=log,
        )
        results["latency"] = {}
        servers = (OURS, NAIVE)
        # the long part of a run (minutes): cells done of all, at what rate, how long to go
        with Progress(len(servers) * cell_count(cfg, workloads), "load cells", "cell") as cells:
            for name in servers:
                probes.append(probe_host(cfg, f"latency: {name}", started))
                log(f"latency: {name}")
                # ours, then: HTTP and the bare session interleaved on the median reviews
                paired_texts = inputs.reviews["median"] if name == OURS else ()
                results["latency"][name] = serve_under_load(
                    name, cfg, workloads, work / "logs", cells, paired_texts
                )
        probes.append(probe_host(cfg, "in-process", started))
        log("in-process timings (raw onnxruntime session, startup probes)")
        results["in_process"] = run_inprocess(cfg, inputs, workloads, work)
        log("roofline: this core's int8 floor beside the classifier session")
        results["roofline"] = run_roofline(cfg)
        probes.append(probe_host(cfg, "micro-batching", started))
        log("micro-batching: /classify throughput off vs the default, median reviews")
        results["microbatch"] = microbatch.in_run(
            cfg.models,
            inputs.reviews["median"],
            cfg.server_cpu,
            cfg.microbatch_seconds,
            cfg.microbatch_rounds,
            work / "logs",
        )
    probes.append(probe_host(cfg, "end", started))
    log("footprint" + (" (fresh venv install of the serve extra)" if cfg.fresh_venv else ""))
    results["footprint"] = footprint.measure(cfg.fresh_venv)
    results["artifacts"] = footprint.artifacts(cfg.run_dir, cfg.models)
    log("image: podman build of the Dockerfile with the shipped models/")
    results["image"] = measure_image(cfg)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.perf_counter() - started, 1)
    return results
