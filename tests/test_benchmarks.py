"""`python -m benchmarks run --quick` end to end: the real harness on the tiny run and bundles.

Both servers really start (ours: `python -m server`; naive: gunicorn + fastai `load_learner`),
really get cold-started and loaded over HTTP, and the run really writes the JSON, the plots and
the markdown report. The numbers are not checked against targets (quick mode counts are too
small to mean anything); the structure, the bookkeeping and the internal consistency are.
Slow (two fastai cold starts per probe): marked `slow`.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import analysis

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = (
    "## Targets (issue 11)",
    "## Setup",
    "## Cold start",
    "## Latency and throughput over HTTP",
    "## Where our time goes",
    "## Memory of the serving processes",
    "## Footprint",
    "## Distance to this core's int8 limit",
    "## Micro-batching of /classify (issues 6 and 11)",
    "## Same answers",
)
PLOTS = ("cold_start.png", "latency_classify.png", "latency_generate.png", "batch_curve.png")


@pytest.fixture(scope="module")
def quick_run(
    tiny_run_and_bundles: tuple[Path, Path], imdb: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    if not (imdb / "test.csv.gz").is_file():
        pytest.skip(f"no IMDB test split at {imdb}")
    run_dir, bundles = tiny_run_and_bundles
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "run",
        "--run",
        str(run_dir),
        "--models",
        str(bundles),
        "--quick",
        "--imdb",
        str(imdb),
        "--results",
        str(out / "results"),
        "--report",
        str(out / "BENCHMARKS.md"),
        "--no-image",
    ]
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads((out / "results" / "benchmark.json").read_text(encoding="utf-8"))
    return {
        "out": out,
        "results": results,
        "argv": argv,
        "stderr": proc.stderr,
        "started": started,
        "report": (out / "BENCHMARKS.md").read_text(encoding="utf-8"),
    }


pytestmark = pytest.mark.slow


def test_cold_starts_of_both_servers_with_phases_that_add_up(quick_run: dict[str, Any]) -> None:
    rows = quick_run["results"]["cold_start"]
    assert {(r["server"], r["kind"]) for r in rows} == {
        (s, k) for s in ("ours", "naive") for k in ("classify", "generate")
    }
    for row in rows:
        assert row["total_s"] > 0
        assert row["phases_s"] is not None, f"{row['server']}: startup log not parsed"
        # Phases come from the server's own log (ours: ms times; naive: 10 ms steps) and end at
        # the client's clock.
        assert sum(row["phases_s"].values()) == pytest.approx(row["total_s"], abs=0.15), row
    ours = [r for r in rows if r["server"] == "ours"]
    assert all(r["exit_code"] == 0 for r in ours)  # SIGTERM ends our server cleanly
    naive = [r for r in rows if r["server"] == "naive"]
    assert all(r["phases_s"]["import fastai + torch"] > 0 for r in naive)


def test_the_cold_start_floor_is_measured_and_named(quick_run: dict[str, Any]) -> None:
    """The floor (a bare interpreter's start, the stack's imports, the sessions) is measured in
    every startup probe, adds up, and bounds both cold-start targets in the report."""
    results = quick_run["results"]
    for probe in results["in_process"]["startup_probes"]:
        assert all(probe[step] > 0 for step in analysis.STACK_FLOOR_STEPS), probe
    medians = analysis.startup_probe_medians(results)
    parts_ms = sum(medians[step] for step in analysis.STACK_FLOOR_STEPS)
    parts_ms += sum(b["session_ms"] for b in medians["bundles"].values())
    assert medians["floor_s"] == round(parts_ms / 1e3, 3) > 0
    cold = [t for t in results["derived"]["targets"] if t["name"].startswith("cold start")]
    assert len(cold) == 2
    assert all(f"floor of the stack {medians['floor_s']:.3f} s" in t["bound"] for t in cold)
    naive_s = analysis.cold_summary(results["cold_start"])["classify"]["naive"]["median_s"]
    at_floor = f"a server at that floor would be {naive_s / medians['floor_s']:.1f}x"
    assert at_floor in cold[0]["bound"], cold[0]["bound"]
    assert f"The floor of this stack: {medians['floor_s']:.3f} s" in quick_run["report"]


def test_every_latency_cell_ran_without_errors(quick_run: dict[str, Any]) -> None:
    results = quick_run["results"]
    cfg = results["config"]
    expected = {
        "readyz (no model)",
        "classify short",
        "classify median",
        "classify long",
        f"generate 1x{cfg['n_words']}",
        f"generate 5x{cfg['n_words']}",
    }
    for server in ("ours", "naive"):
        cells = results["latency"][server]["cells"]
        assert {c["workload"] for c in cells} == expected
        for cell in cells:
            levels = (
                [min(cfg["concurrency"])]
                if cell["workload"].startswith("readyz")
                else cfg["concurrency"]
            )
            assert cell["concurrency"] in levels
            assert cell["errors"] == 0, cell["error_examples"]
            assert cell["n"] == len(cell["samples_ms"]) >= cell["concurrency"]
            assert cell["n"] <= max(
                cfg["classify_requests"], cfg["generate_requests"], cell["concurrency"]
            )
            assert (
                0
                < cell["min_ms"]
                <= cell["p50_ms"]
                <= cell["p95_ms"]
                <= cell["p99_ms"]
                <= cell["max_ms"]
            )
            assert cell["throughput_rps"] > 0
        assert results["latency"][server]["memory"]["peak_tree_pss_mib"] > 10
        assert results["latency"][server]["memory"]["processes"] == 2  # master + one worker
    assert results["latency"]["ours"]["exit_code"] == 0


def test_our_answers_are_split_by_the_servers_own_timing(quick_run: dict[str, Any]) -> None:
    """Ours' model cells carry the Server-Timing split of the same requests (the naive server
    sends none), and the overhead row says what it is made of from it."""
    for cell in quick_run["results"]["latency"]["ours"]["cells"]:
        timing = cell["server_timing"]
        assert timing is not None and 0 < timing["app_p50_ms"] <= cell["p50_ms"]
        if cell["workload"].startswith("classify"):
            assert 0 < timing["model_p50_ms"] <= timing["app_p50_ms"]
            assert timing["tokenize_p50_ms"] > 0 and timing["outside_app_p50_ms"] > 0
    assert all(
        c["server_timing"] is None for c in quick_run["results"]["latency"]["naive"]["cells"]
    )
    overhead = next(
        t
        for t in quick_run["results"]["derived"]["targets"]
        if t["name"].startswith("server overhead")
    )
    assert "Server-Timing in the same requests" in overhead["bound"]
    assert "floor: tokenization + the round trip after a model run" in overhead["bound"]


def test_overhead_is_paired_with_the_bare_session_on_the_same_core(
    quick_run: dict[str, Any],
) -> None:
    """The overhead target's figure: every median review sent over HTTP and run bare in a
    second process on the server's core, in alternating blocks (ours only)."""
    results = quick_run["results"]
    paired = results["latency"]["ours"]["paired_overhead"]
    cfg = results["config"]
    count = cfg["reviews_per_band"] * cfg["paired_rounds"] * paired["per_block"]
    assert paired["http"]["n"] == paired["session"]["n"] == count
    assert 0 < paired["session"]["p50_ms"] < paired["http"]["p50_ms"]
    assert paired["overhead_p50_ms"] == round(
        paired["http"]["p50_ms"] - paired["session"]["p50_ms"], 3
    )
    blocks = cfg["reviews_per_band"] * cfg["paired_rounds"]
    after, idle = paired["readyz_after_model"], paired["readyz_after_no_work"]
    assert after["n"] == idle["n"] == blocks and after["p50_ms"] > 0 and idle["p50_ms"] > 0
    timing = paired["server_timing"]  # the server's own stages, in the paired requests
    assert 0 < timing["model_p50_ms"] < paired["http"]["p50_ms"]
    assert 0 < timing["over_model_p50_ms"] < paired["http"]["p50_ms"]
    assert results["latency"]["naive"]["paired_overhead"] is None
    row = next(t for t in results["derived"]["targets"] if t["name"].startswith("server overhead"))
    assert row["value"] == paired["overhead_p50_ms"]
    assert row["bound"].startswith("paired on the server's core")
    assert f"overhead **{paired['overhead_p50_ms']:.2f} ms**" in quick_run["report"] or (
        f"overhead **{paired['overhead_p50_ms']:,.1f} ms**" in quick_run["report"]
    )


def test_http_answers_match_the_in_process_path(quick_run: dict[str, Any]) -> None:
    """The labels ours sent over HTTP are the labels the same bundle gives in process, review
    by review: the load generator's bookkeeping (which body got which answer) is right."""
    results = quick_run["results"]
    raw = results["in_process"]["raw"]["classify"]
    http = results["latency"]["ours"]["labels"]
    for band in ("short", "median", "long"):
        answers = http[f"classify {band}"]
        assert answers, band
        for index, label in answers.items():
            assert label == raw[band]["labels"][int(index)], (band, index)
        assert raw[band]["session"]["p50_ms"] > 0
        assert (
            raw[band]["in_process"]["n"]
            == len(raw[band]["labels"]) * results["config"]["raw_repeats"]
        )
    agreement = results["derived"]["label_agreement"]
    assert agreement["compared"] == sum(len(v) for v in http.values())


def test_footprint_and_skipped_image(quick_run: dict[str, Any]) -> None:
    results = quick_run["results"]
    serve = results["footprint"]["serve_from_dev_venv"]
    assert {"onnxruntime", "numpy", "falcon", "gunicorn"} <= set(serve["distributions"])
    assert not {"torch", "fastai", "spacy"} & set(serve["distributions"])
    naive = results["footprint"]["naive_stack"]
    assert {"torch", "fastai", "spacy", "falcon", "gunicorn"} <= set(naive["distributions"])
    assert naive["bytes"] > serve["bytes"] > 0
    assert results["footprint"]["serve_fresh_venv"] is None  # quick mode weighs the dev venv
    assert results["image"]["measured"] is False
    assert "not measured in this run" in quick_run["report"]


def test_report_and_plots(quick_run: dict[str, Any]) -> None:
    report, out = quick_run["report"], quick_run["out"]
    for section in SECTIONS:
        assert section in report, section
    # the exact command, the date of this run, the machine
    results = quick_run["results"]
    assert f"`python -m benchmarks {' '.join(quick_run['argv'])}`" in report
    assert results["started_at"] in report and results["machine"]["cpu_model"] in report
    assert "Quick mode" in report
    targets = results["derived"]["targets"]
    assert len(targets) == 12 and all(t["name"] in report for t in targets)
    roofline = next(t for t in targets if "int8 floor" in t["name"])
    assert roofline["value"] == results["roofline"]["session_over_floor"] > 0
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(Path(i).name for i in images) == sorted(PLOTS)
    for image in images:
        path = (out / image).resolve()
        assert path.parent == out / "results"
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE, image
        width, height = struct.unpack(">II", data[16:24])  # IHDR
        assert width >= 400 and height >= 300 and len(data) > 10_000, (image, width, height)
        assert path.stat().st_mtime >= quick_run["started"], f"{image} not written by this run"


def _row(report: str, first_cell: str, second_cell: str | None = None) -> list[str]:
    """The cells of the report's table row that starts with `first_cell` (and `second_cell`)."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if (
            line.startswith("|")
            and cells[0] == first_cell
            and (second_cell is None or cells[1] == second_cell)
        ):
            return cells
    raise AssertionError(f"no row {first_cell!r} {second_cell!r} in the report")


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def test_report_figures_are_the_runs_own(quick_run: dict[str, Any]) -> None:
    """Every latency cell, cold-start median, ratio and memory figure in BENCHMARKS.md is the
    one this run measured (read back from its JSON), not a typed or stale number."""
    report, results = quick_run["report"], quick_run["results"]
    latency = results["latency"]
    assert latency["ours"]["skipped_cells"] == latency["naive"]["skipped_cells"] == []
    for ours in latency["ours"]["cells"]:
        naive = next(
            c
            for c in latency["naive"]["cells"]
            if (c["workload"], c["concurrency"]) == (ours["workload"], ours["concurrency"])
        )
        row = _row(report, f"`{ours['workload']}`", str(ours["concurrency"]))
        for column, cell in ((2, ours), (4, naive)):
            assert row[column] == " / ".join(_ms(cell[k]) for k in ("p50_ms", "p95_ms", "p99_ms"))
        assert row[6] == f"**{round(naive['p50_ms'] / ours['p50_ms'], 2):,.1f}x**"
        assert row[7] == f"{ours['n']} / {naive['n']}"
    cold = results["derived"]["cold_start"]
    for kind in ("classify", "generate"):
        row = _row(report, f"`/{kind}`")
        ours, naive = cold[kind]["ours"], cold[kind]["naive"]
        assert row[1].startswith(f"{ours['median_s']:.3f} s ({ours['min_s']:.3f}-")
        assert row[2].startswith(f"{naive['median_s']:.2f} s ({naive['min_s']:.2f}-")
        assert row[3] == f"**{cold[kind]['ratio']:,.1f}x**"
        assert row[4] == f"{ours['n']} + {naive['n']}" == "2 + 2"
    for target in results["derived"]["targets"]:
        row = _row(report, target["name"])
        if target["value"] is None:
            assert row[1] == "not measured" and row[3] == "-"
        else:
            assert row[1].startswith(f"{target['value']:,.2f}")
            assert row[3] == ("yes" if target["met"] else "**no**")
    memory = _row(report, "peak PSS, master + worker (MiB)")
    assert memory[1:3] == [
        str(latency[s]["memory"]["peak_tree_pss_mib"]) for s in ("ours", "naive")
    ]
    microbatch = results["microbatch"]  # this run's, not the separate run's file
    assert {(r["setting"], r["concurrency"]) for r in microbatch["table"]} == {
        (setting, c) for setting in ("off", "on (default)") for c in (1, 8)
    }
    assert all(r["errors"] == 0 and r["throughput_rps"] > 0 for r in microbatch["table"])
    for row in microbatch["table"]:
        assert (
            _row(report, row["setting"], str(row["concurrency"]))[2]
            == f"{row['throughput_rps']:,.2f}"
        )
