"""Does micro-batching of /classify pay? `python -m benchmarks.microbatch --models DIR`.

Issue 6 keeps it only if it raises throughput at concurrency 8 on one core without hurting p50
at concurrency 1. This starts the production server (`python -m server`, pinned to one core,
one onnxruntime thread) once per setting and round, and drives it with the project's closed-loop
load generator over real IMDB test reviews (a natural mix of lengths, single-review requests).
Settings and rounds are interleaved (off, on, on+wait, off, ...) so drift in a shared machine's
load hits all of them alike; the table reports medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.inputs import default_imdb_dir, evenly_spaced, read_test_reviews
from benchmarks.loadgen import Workload, run_load
from benchmarks.procfs import tree
from benchmarks.servers import free_port, our_server, pin_client, start, wait_ready

REPO = Path(__file__).resolve().parent.parent
SETTINGS: dict[str, dict[str, str]] = {
    "off": {"MICROBATCH": "false"},
    "on": {"MICROBATCH": "true", "MICROBATCH_WAIT_MS": "0"},
    "on, wait 2 ms": {"MICROBATCH": "true", "MICROBATCH_WAIT_MS": "2"},
}
CONCURRENCIES = (1, 8)


def measure(
    models: Path,
    name: str,
    env: dict[str, str],
    workload: Workload,
    cpu: int | None,
    seconds: float,
    max_requests: int,
    log_dir: Path,
) -> list[dict[str, Any]]:
    port = free_port()
    spec = our_server(models, port)
    spec.env.update(env, WEB_THREADS="8")
    server = start(spec, port, log_dir, cpu)
    try:
        wait_ready(server, 180)
        run_load(server.base_url, workload, 2, 16, 30)  # warm caches and connections
        rows = []
        for concurrency in CONCURRENCIES:
            cpu_before = tree_cpu_s(server.pid)
            result = run_load(server.base_url, workload, concurrency, max_requests, seconds)
            cpu_ms = (tree_cpu_s(server.pid) - cpu_before) * 1e3
            per_request = round(cpu_ms / result.completed, 3) if result.completed else None
            rows.append({"setting": name, **result.summary(), "cpu_ms_per_request": per_request})
        return rows
    finally:
        server.stop()


def in_run(
    models: Path, reviews: list[str], cpu: int | None, seconds: float, rounds: int, log_dir: Path
) -> dict[str, Any]:
    """The part of `python -m benchmarks run` that answers issue 11's throughput row: off
    against the server's default micro-batching, on the given (median band) reviews."""
    from server.config import Settings

    default = Settings()
    settings = {
        "off": SETTINGS["off"],
        "on (default)": {
            "MICROBATCH": "true",
            "MICROBATCH_WAIT_MS": f"{default.microbatch_wait_ms:g}",
        },
    }
    workload = Workload("classify-review", "/classify", [{"text": t} for t in reviews], "label")
    rows: list[dict[str, Any]] = []
    for round_index in range(rounds):
        for name, env in settings.items():
            for row in measure(models, name, env, workload, cpu, seconds, 2000, log_dir):
                rows.append({**row, "round": round_index})
    manifest = json.loads((models / "imdb-sentiment" / "manifest.json").read_text())
    return {
        "models": str(models),
        "architecture": manifest["architecture"],
        "model": f"{manifest['name']}@{manifest['version']}",
        "reviews": len(reviews),
        "seconds_per_run": seconds,
        "rounds": rounds,
        "table": summarise(rows, list(settings)),
        "runs": rows,
    }


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used so far. Per request it is
    what throughput on one dedicated core comes to (1 / CPU per request), and unlike wall time
    it barely moves when other work shares the core (a busy machine)."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def summarise(
    rows: list[dict[str, Any]], settings: list[str] | None = None
) -> list[dict[str, Any]]:
    """Median over rounds of throughput and latency percentiles, per setting and concurrency."""
    table = []
    for name in settings or list(SETTINGS):
        for concurrency in CONCURRENCIES:
            runs = [r for r in rows if r["setting"] == name and r["concurrency"] == concurrency]
            if not runs:
                continue
            table.append(
                {
                    "setting": name,
                    "concurrency": concurrency,
                    "rounds": len(runs),
                    "throughput_rps": round(
                        statistics.median(r["throughput_rps"] for r in runs), 2
                    ),
                    "cpu_ms_per_request": round(
                        statistics.median(r["cpu_ms_per_request"] for r in runs), 2
                    ),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 1),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 1),
                    "errors": sum(r["errors"] for r in runs),
                }
            )
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | concurrency | throughput (req/s) | server CPU per request (ms) | p50 (ms) "
        "| p99 (ms) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table:
        lines.append(
            f"| {row['setting']} | {row['concurrency']} | {row['throughput_rps']} | "
            f"{row['cpu_ms_per_request']} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {row['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.microbatch", description=__doc__)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--imdb", type=Path, default=default_imdb_dir())
    parser.add_argument("--reviews", type=int, default=64, help="distinct reviews sent in turn")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="per setting, round, concurrency"
    )
    parser.add_argument(
        "--chars",
        default=None,
        help="MIN-MAX: only reviews of this many characters (e.g. 894-1043, the report's median "
        "band); default: the natural mix of lengths",
    )
    parser.add_argument("--requests", type=int, default=2000, help="cap per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "microbatch.json"
    )
    args = parser.parse_args(argv)

    pin_client(args.client_cpu)
    pool = read_test_reviews(args.imdb)
    if args.chars:
        low, high = (int(part) for part in args.chars.split("-"))
        pool = [text for text in pool if low <= len(text) <= high]
    reviews = evenly_spaced(pool, args.reviews)
    workload = Workload("classify-review", "/classify", [{"text": t} for t in reviews], "label")
    rows: list[dict[str, Any]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="microbatch-") as logs:
        for round_index in range(args.rounds):
            for name, env in SETTINGS.items():
                for row in measure(
                    args.models,
                    name,
                    env,
                    workload,
                    args.server_cpu,
                    args.seconds,
                    args.requests,
                    Path(logs),
                ):
                    row["round"] = round_index
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    table = summarise(rows)
    manifest = json.loads((args.models / "imdb-sentiment" / "manifest.json").read_text())
    report = {
        "models": str(args.models),
        "architecture": manifest["architecture"],
        "model": f"{manifest['name']}@{manifest['version']}",
        "reviews": len(reviews),
        "chars": args.chars,
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "seconds_per_run": args.seconds,
        "wall_s": round(time.time() - started, 1),
        "table": table,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
