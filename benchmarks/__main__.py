"""`python -m benchmarks run --run RUN --models MODELS [--quick]`: ours vs the naive fastai way.
`python -m benchmarks short-texts --bundle BUNDLE`: short-text accuracy vs TF-IDF + LR.

Writes the raw JSON and PNG plots under --results (default benchmarks/results/) and the
report to --report (default BENCHMARKS.md). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from benchmarks import short_texts
from benchmarks.inputs import default_imdb_dir
from benchmarks.runner import BenchConfig, log

RESULTS_JSON = "benchmark.json"
MICROBATCH_JSON = "microbatch.json"
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def _cpu(text: str) -> int | None:
    return None if text.lower() in ("none", "-") else int(text)


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every benchmark and write the report")
    run.add_argument(
        "--run",
        dest="run_dir",
        type=Path,
        required=True,
        help="training run dir holding classifier.pkl and lm.pkl (the naive way)",
    )
    run.add_argument(
        "--models",
        type=Path,
        required=True,
        help="bundles dir: one classify and one generate bundle (ours)",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts to check the harness (numbers are not results)",
    )
    run.add_argument(
        "--imdb",
        dest="imdb_dir",
        type=Path,
        default=None,
        help=f"IMDB CSV dir (default $IMDB_DIR or {default_imdb_dir()})",
    )
    run.add_argument(
        "--results",
        dest="results_dir",
        type=Path,
        default=None,
        help="where the JSON and plots go (default benchmarks/results)",
    )
    run.add_argument(
        "--report",
        dest="report_path",
        type=Path,
        default=None,
        help="markdown report path (default BENCHMARKS.md)",
    )
    run.add_argument("--cold-runs", type=int, help="cold starts per server and probe (default 5)")
    run.add_argument("--concurrency", type=_ints, help="comma list (default 1,4,8)")
    run.add_argument("--classify-requests", type=int, help="max requests per /classify cell")
    run.add_argument("--generate-requests", type=int, help="max requests per /generate cell")
    run.add_argument(
        "--cell-seconds",
        type=float,
        help="no new request starts after this many s in a cell (default 15)",
    )
    run.add_argument(
        "--cell-max-seconds",
        type=float,
        help="skip a cell predicted to take longer than this in s (default 120)",
    )
    run.add_argument("--reviews-per-band", type=int, help="reviews per length band (default 20)")
    run.add_argument("--prompts", type=int, help="generation prompts (default 8)")
    run.add_argument("--n-words", type=int, help="words per generated sample (default 40)")
    run.add_argument("--raw-repeats", type=int, help="in-process repeats per input (default 5)")
    # SUPPRESS: an absent flag keeps the default, while "none" (unpinned) is a real value.
    run.add_argument(
        "--server-cpu",
        type=_cpu,
        default=argparse.SUPPRESS,
        help="core for the servers, or 'none' (default 0)",
    )
    run.add_argument(
        "--client-cpu",
        type=_cpu,
        default=argparse.SUPPRESS,
        help="core for the load generator, or 'none' (default 1)",
    )
    fresh = run.add_mutually_exclusive_group()
    fresh.add_argument(
        "--fresh-venv",
        dest="fresh_venv",
        action="store_true",
        default=None,
        help="weigh the serve extra in a fresh venv (pip from PyPI; minutes)",
    )
    fresh.add_argument(
        "--no-fresh-venv",
        dest="fresh_venv",
        action="store_false",
        help="weigh the same pinned distributions in this venv (default)",
    )
    run.add_argument(
        "--no-image",
        dest="image",
        action="store_false",
        default=None,
        help="skip building and weighing the shipped container image (needs podman and root)",
    )
    short_texts.add_parser(sub)
    return p


def config_from(args: argparse.Namespace, argv: list[str]) -> BenchConfig:
    values: dict[str, Any] = BenchConfig.quick_defaults() if args.quick else {}
    for name in (
        "imdb_dir",
        "results_dir",
        "report_path",
        "cold_runs",
        "concurrency",
        "classify_requests",
        "generate_requests",
        "cell_seconds",
        "cell_max_seconds",
        "reviews_per_band",
        "prompts",
        "n_words",
        "raw_repeats",
        "fresh_venv",
        "image",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    for name in ("server_cpu", "client_cpu"):
        if hasattr(args, name):
            values[name] = getattr(args, name)
    return BenchConfig(
        run_dir=args.run_dir.resolve(),
        models=args.models.resolve(),
        command="python -m benchmarks " + shlex.join(argv),
        **values,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.command == "short-texts":
        return short_texts.main(args)
    cfg = config_from(args, argv)
    from benchmarks import plots, report, runner
    from benchmarks.analysis import cold_summary, label_agreement, targets

    results = runner.run(cfg)
    results["derived"] = {
        "cold_start": cold_summary(results["cold_start"]),
        "targets": targets(results),
        "label_agreement": label_agreement(results),
    }
    cfg.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = cfg.results_dir / RESULTS_JSON
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    made = plots.write_plots(results, cfg.results_dir)
    cfg.report_path.parent.mkdir(parents=True, exist_ok=True)
    # Issue 6's micro-batching result has its own run (python -m benchmarks.microbatch); the
    # report shows the one beside this run's JSON, else the repository's.
    microbatch = cfg.results_dir / MICROBATCH_JSON
    if not microbatch.is_file():
        microbatch = DEFAULT_RESULTS / MICROBATCH_JSON
    cfg.report_path.write_text(
        report.render(results, cfg.report_path, made, json_path, microbatch), encoding="utf-8"
    )
    log(f"wrote {cfg.report_path}, {json_path} and {len(made)} plots in {results['duration_s']} s")
    for target in results["derived"]["targets"]:
        log(
            f"  {target['name']}: {target['value']} {target['unit']} (target {target['target']}, "
            f"met={target['met']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
