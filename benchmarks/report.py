"""BENCHMARKS.md from a results dict. Every figure comes from the run; nothing is typed by hand."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import analysis, hostprobe
from benchmarks.coldstart import NAIVE_PHASES, OUR_PHASES
from benchmarks.servers import NAIVE, OURS

MB = 1e6


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _us(ms: Any) -> str:
    """Microseconds, for the sub-millisecond figures of the roofline."""
    return "-" if ms is None else f"{ms * 1e3:,.1f} µs"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"**{value:,.1f}x**"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:,.1f} MB"


def render(
    results: dict[str, Any],
    report_path: Path,
    plots: Sequence[Path],
    json_path: Path,
    microbatch_path: Path | None = None,
) -> str:
    rel = lambda p: os.path.relpath(p, report_path.parent)  # noqa: E731
    m = results["machine"]
    out: list[str] = ["# Benchmarks: our server vs serving the fastai learner directly", ""]
    out += [
        f"Written by `{results['command']}` on {results['started_at']} "
        f"(commit {m['git_commit']}{', with uncommitted changes' if m['git_dirty'] else ''}; "
        f"the run took {results['duration_s']:.0f} s). Figures are only ever written by the "
        f"benchmark run; do not edit them by hand. Raw data: `{rel(json_path)}`; how to run "
        f"and what each number means: `docs/benchmarks.md`.",
        "",
    ]
    if results["config"]["quick"]:
        out += [
            "> **Quick mode**: tiny request counts, for checking the harness only. "
            "These numbers are not benchmark results.",
            "",
        ]

    out += ["## Targets (issue 11)", ""]
    out += _table(
        ["measure", "reached", "target", "met", "what bounds it (measured)"],
        (
            [
                t["name"],
                f"{_num(t['value'])} {t['unit']}" if t["value"] is not None else "not measured",
                t["target"],
                {True: "yes", False: "**no**", None: "-"}[t["met"]],
                t["bound"] or "-",
            ]
            for t in analysis.targets(results)
        ),
    )

    out += _setup(results, rel)
    out += _cold_start(results, plots, rel)
    out += _latency(results, plots, rel)
    out += _overhead(results)
    out += _memory(results)
    out += _footprint(results)
    out += _roofline(results, plots, rel)
    out += _microbatch(results, microbatch_path or json_path.parent / "microbatch.json", rel)
    agreement = analysis.label_agreement(results)
    out += [
        "## Same answers",
        "",
        f"Labels of the reviews sent at the lowest concurrency, ours vs naive: "
        f"{agreement['agree']} of {agreement['compared']} agree"
        + (f" ({agreement['rate']:.1%})." if agreement["rate"] is not None else "."),
        "Generated samples are not compared (different random generators); both servers "
        "sample from the same distribution (see docs/api.md).",
        "",
    ]
    return "\n".join(out).rstrip() + "\n"


def _microbatch(results: dict[str, Any], path: Path, rel: Any) -> list[str]:
    """Micro-batching of /classify: this run's measurement (median reviews, off vs the default),
    else the separate `python -m benchmarks.microbatch` run's JSON when it exists."""
    if "microbatch" in results:
        data, how = results["microbatch"], "this run"
        inputs = f"{data['reviews']} median-band IMDB test reviews"
    elif path.is_file():
        data, how = (
            json.loads(path.read_text(encoding="utf-8")),
            "`python -m benchmarks.microbatch`",
        )
        inputs = f"{data['reviews']} IMDB test reviews (their natural mix of lengths)"
    else:
        return []
    arch = data["architecture"]
    out = [
        "## Micro-batching of /classify (issues 6 and 11)",
        "",
        f"Measured by {how}: the production server pinned to one core, single-review "
        f"`/classify` requests over {inputs}, closed loop, {data['seconds_per_run']:.0f} s per "
        f"setting, round and concurrency; medians over rounds. Model: {data['model']} (AWD-LSTM, "
        f"emb {arch['emb_size']}, hidden {arch['hidden_size']}, {arch['n_layers']} layers, "
        f"int8). {data.get('models_note', '')} Raw data: "
        f"`{rel(path) if how != 'this run' else 'benchmark.json'}`.",
        "",
    ]
    out += _table(
        ["setting", "concurrency", "throughput (req/s)", "p50 (ms)", "p99 (ms)", "errors"],
        (
            [
                row["setting"],
                row["concurrency"],
                _num(row["throughput_rps"]),
                _ms(row["p50_ms"]),
                _ms(row["p99_ms"]),
                row["errors"],
            ]
            for row in data["table"]
        ),
    )
    out += _microbatch_verdict(data["table"])
    return out


PAYS_MIN_GAIN = 0.05  # throughput at the top concurrency, over off
HURTS_MAX_P50 = (
    0.0  # p50 at concurrency 1, over off: not hurt at all (a lone request must not wait)
)


def _microbatch_verdict(table: list[dict[str, Any]]) -> list[str]:
    """Issue 6's rule: keep micro-batching only if it raises throughput at the top concurrency
    without hurting p50 at concurrency 1. Compares every coalescing setting with off, and says
    what the server's default is (read from server/config.py, not assumed)."""
    from server.config import Settings

    top, low = max(r["concurrency"] for r in table), min(r["concurrency"] for r in table)
    by = {(r["setting"], r["concurrency"]): r for r in table}
    if ("off", top) not in by or ("off", low) not in by:
        return []
    off_top, off_low = by[("off", top)]["throughput_rps"], by[("off", low)]["p50_ms"]
    lines, passing = [], []
    for setting in sorted({r["setting"] for r in table} - {"off"}):
        if (setting, top) not in by or (setting, low) not in by:
            continue
        gain = by[(setting, top)]["throughput_rps"] / off_top - 1
        p50 = by[(setting, low)]["p50_ms"] / off_low - 1
        ok = gain > PAYS_MIN_GAIN and p50 <= HURTS_MAX_P50
        passing += [(gain, setting)] if ok else []
        lines.append(
            f"- `{setting}`: throughput at concurrency {top} {gain:+.0%} against off, p50 at "
            f"concurrency {low} {p50:+.0%}: {'pays' if ok else 'does not pay'}."
        )
    default = Settings()
    state = (
        f"on (`MICROBATCH_WAIT_MS={default.microbatch_wait_ms:g}`)" if default.microbatch else "off"
    )
    verdict = (
        f"By the rule (more than {PAYS_MIN_GAIN:.0%} more throughput at concurrency {top}, p50 at "
        f"concurrency {low} no higher than off), `{max(passing)[1]}` pays"
        if passing
        else "No setting pays by the rule (more than "
        f"{PAYS_MIN_GAIN:.0%} more throughput at concurrency {top}, p50 at concurrency {low} "
        f"no higher than off)"
    )
    return [
        *lines,
        "",
        f"{verdict}. The server's default: micro-batching {state} (docs/configuration.md).",
        "",
    ]


def _setup(results: dict[str, Any], rel: Any) -> list[str]:
    m, cfg, pin = results["machine"], results["config"], results["pinning"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    out = [
        "## Setup",
        "",
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB; "
        f"{m['platform']}; Python {m['python']}.",
        f"- Load average (1/5/15 min) at start {m['load_average']}, at end "
        f"{m.get('load_average_end')} (anything else running on the machine shows here).",
        *host_speed_lines(results.get("host_probes") or []),
        f"- Each server runs alone, pinned with `taskset -c {pin['server_cpu']}`, every math "
        f"library at one thread ({', '.join(f'{k}=1' for k in pin['threads_env'])}); the load "
        f"generator runs on CPU {pin['client_cpu'] if pin['client_cpu'] is not None else 'unpinned'}.",
        "- Ours: `python -m server` (gunicorn, one gthread worker, bundles preloaded in the "
        "master). Naive: `gunicorn --workers 1` (sync) serving `benchmarks/naive_app.py`, "
        "which `load_learner`s the same learners and calls `learn.predict` per request.",
        f"- Versions: {versions}.",
        f"- Learners: `{cfg['run_dir']}`; bundles: `{cfg['models']}`"
        + _provenance(results.get("provenance") or {})
        + ".",
        "",
    ]
    out += _table(
        ["bundle", "version", "task", "model", "vocab", "emb", "hidden", "layers"],
        (
            [
                name,
                b["version"],
                b["task"],
                f"{b['quantization']} {b['format']}, {_mb(b['model_bytes'])}",
                _num(b["vocab_size"]),
                _num(b["emb_size"]),
                _num(b["hidden_size"]),
                _num(b["n_layers"]),
            ]
            for name, b in results["bundles"].items()
        ),
    )
    inputs = results["inputs"]
    raw = results["in_process"]["raw"].get("classify", {})
    out += [
        f"Inputs: reviews from `{inputs['source']}` ({inputs['test_reviews']:,} test reviews), "
        f"picked evenly from length bands; {len(inputs['prompts'])} prompts (opening words of "
        f"other test reviews), each `/generate` with its own seed.",
        "",
    ]
    out += _table(
        ["band", "reviews", "characters", "tokens (min / median / max)"],
        (
            [
                band,
                inputs["reviews_per_band"][band],
                f"{lo:,}-{hi:,}",
                " / ".join(_num(raw[band]["tokens"][k], 0) for k in ("min", "median", "max"))
                if band in raw
                else "-",
            ]
            for band, (lo, hi) in inputs["band_chars"].items()
        ),
    )
    out += [
        f"Counts: {cfg['cold_runs']} cold starts per server and probe; per latency cell at "
        f"most {cfg['classify_requests']} `/classify` or {cfg['generate_requests']} `/generate` "
        f"requests and no new request after {cfg['cell_seconds']} s (requests in flight "
        f"finish); a cell predicted to take over {cfg.get('cell_max_seconds', '-')} s is "
        f"skipped and listed; concurrency {', '.join(map(str, cfg['concurrency']))}.",
        "",
    ]
    return out


def host_speed_lines(probes: list[dict[str, Any]]) -> list[str]:
    """One line: the host's memory speed at each phase (benchmarks/hostprobe.py)."""
    if not probes:
        return []
    readings = "; ".join(
        f"{p['phase']} {p['dram_copy_gb_per_s']} / {p['l3_copy_gb_per_s']}" for p in probes
    )
    dram, l3 = (hostprobe.spread(probes, k) for k in ("dram_copy_gb_per_s", "l3_copy_gb_per_s"))
    worst = max((x for x in (dram, l3) if x is not None), default=None)
    verdict = (
        ""
        if worst is None
        else f" Slowest phase {100 * worst:.0f} % below the fastest"
        + (
            ": splits across phases (HTTP - in-process) and absolute rows are not comparable "
            "with another run's (docs/benchmarks.md)."
            if worst > hostprobe.COMPARABLE_SPREAD
            else "."
        )
    )
    return [
        "- Host memory speed on the server's core as each phase starts (numpy copy, GB/s, "
        f"DRAM / L3): {readings}.{verdict}"
    ]


def _provenance(provenance: dict[str, Any]) -> str:
    same = [n for n, p in provenance.items() if p["same_training_config"]]
    other = [n for n, p in provenance.items() if p["same_training_config"] is False]
    text = (
        (
            f" ({', '.join(same)}: the manifest records this run's training config and "
            f"vocabulary size)"
        )
        if same
        else ""
    )
    if other:
        text += (
            f" ({', '.join(other)}: same architecture and vocabulary size as this run, but "
            f"the manifest's training config differs from its config.json)"
        )
    return text


def _cold_start(results: dict[str, Any], plots: Sequence[Path], rel: Any) -> list[str]:
    summary = analysis.cold_summary(results["cold_start"])
    out = [
        "## Cold start",
        "",
        "From the exec of the server process to the first successful answer (the client "
        "retries refused connections every 5 ms from its own core).",
        "",
    ]
    out += _table(
        ["first answer", "ours median (min-max)", "naive median (min-max)", "ratio", "runs"],
        (
            [
                f"`/{kind}`",
                f"{s[OURS]['median_s']:.3f} s ({s[OURS]['min_s']:.3f}-{s[OURS]['max_s']:.3f})",
                f"{s[NAIVE]['median_s']:.2f} s ({s[NAIVE]['min_s']:.2f}-{s[NAIVE]['max_s']:.2f})",
                _ratio(s.get("ratio")),
                f"{s[OURS]['n']} + {s[NAIVE]['n']}",
            ]
            for kind, s in summary.items()
            if OURS in s and NAIVE in s
        ),
    )
    for server, names, source in (
        (
            OURS,
            OUR_PHASES,
            "its JSON startup log (`models loaded`, `ready`), each line's time (ms)",
        ),
        (NAIVE, NAIVE_PHASES, "the line `benchmarks/naive_app.py` prints, in 10 ms steps"),
    ):
        out += [
            f"Phases, {server} (medians, s; from {source}; ages since the exec):",
            "",
        ]
        out += _table(
            ["phase"] + [f"first /{k}" for k in summary],
            (
                [phase]
                + [
                    _num((summary[k].get(server, {}).get("phases_median_s") or {}).get(phase), 3)
                    for k in summary
                ]
                for phase in names
            ),
        )
    probe = analysis.startup_probe_medians(results)
    stack = (
        f"interpreter start {_ms(probe['interpreter_ms'])} ms, "
        if "interpreter_ms" in probe
        else ""
    )
    stack += f"import numpy {_ms(probe['import_numpy_ms'])} ms, onnxruntime "
    stack += f"{_ms(probe['import_onnxruntime_ms'])} ms, "
    if "import_falcon_ms" in probe:
        stack += (
            f"gunicorn (arbiter + gthread worker) {_ms(probe['import_gunicorn_ms'])} ms, "
            f"falcon {_ms(probe['import_falcon_ms'])} ms, "
        )
    out += [
        f"Ours in finer steps (a bare interpreter doing the same work, median of {probe['n']}): "
        f"{stack}bundle package {_ms(probe['import_bundle_ms'])} ms; per bundle:",
        "",
    ]
    out += _table(
        [
            "bundle",
            "verify manifest (sha256) ms",
            "tokenizer tables ms",
            "session creation ms",
            "warm-up ms",
        ],
        (
            [
                name,
                _ms(b["verify_manifest_ms"]),
                _ms(b["tokenizer_ms"]),
                _ms(b["session_ms"]),
                _ms(b["warm_up_ms"]),
            ]
            for name, b in probe["bundles"].items()
        ),
    )
    if probe.get("floor_s") is not None:
        out += [
            f"The floor of this stack: {probe['floor_s']:.3f} s, what any Python server of numpy, "
            "onnxruntime, gunicorn and Falcon spends before it can answer (the interpreter's "
            "start, those four imports, the bundles' sessions), none of it ours. Everything "
            "else in the phases above is this server's own work: its modules, the sha256 "
            "checks, the tokenizer tables, gunicorn's set-up, the fork, the warm-up, and the "
            "first request (whose inference any server runs too).",
            "",
        ]
    out += [f"![cold start phases]({rel(p)})" for p in plots if p.name == "cold_start.png"] + [""]
    return out


def _latency(results: dict[str, Any], plots: Sequence[Path], rel: Any) -> list[str]:
    out = [
        "## Latency and throughput over HTTP",
        "",
        "Closed-loop load: `c` client threads, each with its own keep-alive connection, "
        "sending the next request when the answer is in. Latency is per request, client side "
        "(ms); throughput is successful requests per second over the cell.",
        "",
    ]
    table = analysis.latency_table(results)

    def percentiles(row: dict[str, Any], server: str) -> str:
        skipped = row["skipped"][server]
        if skipped:
            return f"skipped (predicted {skipped['predicted_s']:.0f} s)"
        return " / ".join(_ms(row[server].get(k)) for k in ("p50_ms", "p95_ms", "p99_ms"))

    out += _table(
        [
            "workload",
            "c",
            "ours p50 / p95 / p99",
            "ours req/s",
            "naive p50 / p95 / p99",
            "naive req/s",
            "p50 ratio",
            "n (ours / naive)",
            "errors",
        ],
        (
            [
                f"`{r['workload']}`",
                r["concurrency"],
                percentiles(r, OURS),
                _num(r["ours"].get("throughput_rps"), 1),
                percentiles(r, NAIVE),
                _num(r["naive"].get("throughput_rps"), 2),
                _ratio(r["p50_ratio"]),
                f"{r['ours'].get('n', '-')} / {r['naive'].get('n', '-')}",
                f"{r['ours'].get('errors', '-')} / {r['naive'].get('errors', '-')}",
            ]
            for r in table
        ),
    )
    skipped = [
        (server, record) for row in table for server, record in row["skipped"].items() if record
    ]
    if skipped:
        out += [
            "Skipped cells: their predicted wall time (the cell's time budget plus the "
            "requests in flight finishing one after another, at the service time measured "
            "just before) exceeded `--cell-max-seconds` "
            f"{skipped[0][1]['cell_max_seconds']:.0f} s: "
            + "; ".join(
                f"{server} `{row['workload']}` c={row['concurrency']} "
                f"({row['service_s']:.2f} s per request, predicted "
                f"{row['predicted_s']:.0f} s)"
                for server, row in skipped
            )
            + ".",
            "",
        ]
    walls = {s: sum(c["wall_s"] for c in results["latency"][s]["cells"]) for s in (OURS, NAIVE)}
    out += [
        f"Wall time of the latency cells: ours {walls[OURS]:.1f} s, naive "
        f"{walls[NAIVE]:.1f} s (each cell stops starting requests after "
        f"{results['config']['cell_seconds']:.0f} s; requests in flight then finish).",
        "",
    ]
    out += [f"![{p.stem}]({rel(p)})" for p in plots if p.name.startswith("latency_")] + [""]
    return out


def _overhead(results: dict[str, Any]) -> list[str]:
    raw = results["in_process"]["raw"]
    out = [
        "## Where our time goes: raw onnxruntime session vs HTTP",
        "",
        "Same inputs, same pinned core, in one process: the bare `session.run` (feed built "
        "beforehand), the tokenizer, and the whole in-process path the server runs "
        "(`predict_texts`; for generation `server.inference.generate.generate_texts` with the "
        "same seeds, its LM steps timed apart). HTTP is ours at the lowest concurrency. p50, ms.",
        "",
    ]
    fp32 = raw.get("classify", {})
    out += _table(
        [
            "workload",
            "tokens",
            "tokenize",
            "session (int8)",
            "session (fp32)",
            "in-process",
            "HTTP",
            "HTTP - session",
            "HTTP - in-process",
        ],
        (
            [
                f"`{r['workload']}`",
                _num(r["tokens_median"], 0),
                _ms(r["tokenize_p50_ms"]),
                _ms(r["session_p50_ms"]),
                _ms(
                    (fp32.get(r["workload"].split()[-1], {}).get("session_fp32") or {}).get(
                        "p50_ms"
                    )
                )
                if r["workload"].startswith("classify")
                else "-",
                _ms(r["in_process_p50_ms"]),
                _ms(r["http_p50_ms"]),
                _ms(r["over_session_ms"]),
                _ms(r["over_in_process_ms"]),
            ]
            for r in analysis.overhead(results)
        ),
    )
    low = min(c["concurrency"] for c in results["latency"][OURS]["cells"])
    paired = results["latency"][OURS].get("paired_overhead")
    if paired:
        out += [
            f"Paired on the server's core (benchmarks/paired.py, the overhead target's figure): "
            f"{paired['per_block']} `/classify` requests, then {paired['per_block']} bare "
            f"session runs in a second process, for each of the {paired['reviews']} median "
            f"reviews in turn, {paired['rounds']} passes: HTTP p50 "
            f"{_ms(paired['http']['p50_ms'])} ms, session p50 {_ms(paired['session']['p50_ms'])}"
            f" ms, overhead **{_ms(paired['overhead_p50_ms'])} ms**. The table above takes its "
            "columns from different phases of the run; this host's speed drifts between them.",
            "",
        ]
    out += _served_timing(results, low)
    floor = analysis.cell(results, OURS, "readyz (no model)", low)
    if floor:
        out += [
            f"HTTP floor: `GET /readyz` (no model work) p50 {_ms(floor['p50_ms'])} ms on ours: "
            f"the load generator + loopback + gunicorn + Falcon round trip that every "
            f"request above also pays.",
            "",
        ]
    gen = raw.get("generate", {})
    if "lm_step_batch5" in gen:
        out += [
            f"One LM step, batch 5, seq 1: p50 {_ms(gen['lm_step_batch5']['p50_ms'])} ms; one "
            f"sampling step (softmax, no-unk, draw) for 5 rows: "
            f"p50 {_ms(gen['sampling_batch5']['p50_ms'])} ms. For generation the session "
            f"column is the sum of the request's LM steps.",
            "",
        ]
    return out


def _served_timing(results: dict[str, Any], concurrency: int) -> list[str]:
    """Ours' latency split by the Server-Timing header of the same requests (none in older runs)."""
    cells = [
        c
        for c in results["latency"][OURS]["cells"]
        if c["concurrency"] == concurrency and (c.get("server_timing") or {}).get("model_p50_ms")
    ]
    if not cells:
        return []
    out = [
        "The same HTTP requests as our server timed them (its `Server-Timing` header, "
        "server/observability/requests.py): the model call (onnxruntime runs and any wait for "
        "one), tokenizing, the rest of the app, and, paired request by request, what each "
        "spent outside the app (HTTP, gunicorn, the client) and around the model call. No "
        "second moment of the host is involved. p50, ms.",
        "",
    ]
    out += _table(
        [
            "workload",
            "HTTP",
            "model",
            "tokenize",
            "rest of the app",
            "outside the app",
            "HTTP - model",
        ],
        (
            [
                f"`{c['workload']}`",
                _ms(c["p50_ms"]),
                _ms(t["model_p50_ms"]),
                _ms(t.get("tokenize_p50_ms")),
                _ms(t.get("app_rest_p50_ms")),
                _ms(t.get("outside_app_p50_ms")),
                _ms(t.get("over_model_p50_ms")),
            ]
            for c in cells
            for t in (c["server_timing"],)
        ),
    )
    return out


def _memory(results: dict[str, Any]) -> list[str]:
    ours, naive = results["latency"][OURS]["memory"], results["latency"][NAIVE]["memory"]
    ratio = lambda k: _ratio(  # noqa: E731
        round(naive[k] / ours[k], 1) if ours.get(k) and naive.get(k) is not None else None
    )
    out = [
        "## Memory of the serving processes",
        "",
        "Read from /proc while and after each server ran every latency cell. PSS splits pages "
        "shared by the gunicorn master and its worker, but also those the libraries share with "
        "processes outside the server (this benchmark's own interpreter): the peak with each "
        "page once adds those back (docs/benchmarks.md), which is what a container limit sees; "
        "VmHWM is each process's own peak resident set.",
        "",
    ]
    out += _table(
        ["", "ours", "naive", "naive / ours"],
        [
            [
                "peak, master + worker, each page once (MiB)",
                ours.get("peak_tree_own_mib") or "-",
                naive.get("peak_tree_own_mib") or "-",
                ratio("peak_tree_own_mib"),
            ],
            [
                "peak PSS, master + worker (MiB)",
                ours["peak_tree_pss_mib"],
                naive["peak_tree_pss_mib"],
                ratio("peak_tree_pss_mib"),
            ],
            [
                "VmHWM, master (MiB)",
                ours["root_vmhwm_mib"],
                naive["root_vmhwm_mib"],
                ratio("root_vmhwm_mib"),
            ],
            [
                "VmHWM, worker (MiB)",
                ours["max_child_vmhwm_mib"],
                naive["max_child_vmhwm_mib"],
                ratio("max_child_vmhwm_mib"),
            ],
        ],
    )
    return out


def _roofline(results: dict[str, Any], plots: Sequence[Path], rel: Any) -> list[str]:
    roof = results.get("roofline")
    if not roof:
        return []
    out = [
        "## Distance to this core's int8 limit",
        "",
        f"`benchmarks/roofline.py` on `{roof['bundle']}`, one thread on the server's core. At "
        "batch 1 each token costs every layer a recurrent int8 GEMV (its weights streamed from "
        "cache) plus its share of one input GEMM over the review; both are timed here with "
        "onnxruntime's own `DynamicQuantizeMatMul`, many nodes per graph so `run()` overhead "
        "is not counted.",
        "",
    ]
    out += _table(
        [
            "layer (in -> hidden)",
            "recurrent GEMV",
            "GEMV weights GB/s",
            "input GEMM / token",
            "floor / token",
        ],
        (
            [
                f"{layer['input']} -> {layer['hidden']}",
                _us(layer["recurrent_gemv"]["ms"]),
                _num(layer["recurrent_gemv"]["weight_gb_per_s"], 1),
                _us(layer["input_gemm"]["ms"] / roof["floor"]["tokens_per_call"]),
                _us(layer["per_token_ms"]),
            ]
            for layer in roof["floor"]["layers"]
        ),
    )
    bandwidth = ", ".join(f"{k} {v} GB/s" for k, v in roof["bandwidth_gb_per_s"].items())
    out += [
        "",
        f"Floor {_us(roof['floor']['per_token_ms'])} per token; the classifier session takes "
        f"{_us(roof['session_per_token_ms'])} per token on a {roof['floor']['tokens_per_call']}-"
        f"token review: **{_num(roof['session_over_floor'])}x** the floor. Copy bandwidth "
        f"(read + write): {bandwidth}.",
        "",
        "One int8 product [m, 768] x [768, 3072] against m (what batching reviews buys the "
        "recurrent step):",
        "",
    ]
    out += _table(
        ["m", "ms", "GOPS", "weights GB/s"],
        (
            [r["m"], _us(r["ms"]), _num(r["gops"], 1), _num(r["weight_gb_per_s"], 1)]
            for r in roof["gemm_batch_curve"]
        ),
    )
    curve = [p for p in plots if p.name == "batch_curve.png"]
    out += ["", "Session ms per review against batch size and length (equal lengths):", ""]
    out += [f"![batch curve]({rel(p)})" for p in curve]
    out += [""]
    return out


def _footprint(results: dict[str, Any]) -> list[str]:
    fp = results["footprint"]
    serve = (
        fp.get("serve_fresh_venv")
        if fp.get("serve_fresh_venv") and "bytes" in fp["serve_fresh_venv"]
        else fp["serve_from_dev_venv"]
    )
    how = (
        "fresh venv, `pip install --only-binary=:all:` of the pinned serve extra"
        if serve is fp.get("serve_fresh_venv")
        else "the serve extra's distributions in the dev venv"
    )
    naive = fp["naive_stack"]
    out = [
        "## Footprint",
        "",
        f"Installed bytes (files in each distribution's RECORD, bytecode included; pip itself "
        f"excluded). Ours: {how}. Naive: {naive['how']}; its CUDA wheels "
        f"(nvidia-*, cuda-*, triton) are shown apart, since a CPU-only torch would not bring "
        f"them (torch's own wheel here is the CUDA build).",
        "",
    ]
    cpu_only = naive["bytes"] - naive["cuda_bytes"]
    out += _table(
        ["", "ours", "naive", "naive / ours"],
        [
            [
                "installed",
                _mb(serve["bytes"]),
                _mb(naive["bytes"]),
                _ratio(round(naive["bytes"] / serve["bytes"], 1)),
            ],
            [
                "installed without CUDA wheels",
                _mb(serve["bytes"]),
                _mb(cpu_only),
                _ratio(round(cpu_only / serve["bytes"], 1)),
            ],
            ["distributions", serve["packages"], naive["packages"], ""],
            [
                "largest",
                ", ".join(f"{n} {b / MB:.0f} MB" for n, b in serve["largest"][:4]),
                ", ".join(f"{n} {b / MB:.0f} MB" for n, b in naive["largest"][:4]),
                "",
            ],
        ],
    )
    art = results["artifacts"]
    out += [
        "Model files each way loads: learner pickles "
        + ", ".join(f"{k} {_mb(v)}" for k, v in art["learner_pickles_bytes"].items())
        + "; bundles (served files) "
        + ", ".join(f"{k} {_mb(v)}" for k, v in art["bundle_bytes"].items())
        + ".",
        "",
    ]
    image = results["image"]
    if image.get("measured"):
        out += [
            f"Container image (`benchmarks/image.py`: this commit's Dockerfile with the shipped "
            f"`models/` ({', '.join(image['models'])}), podman, {image['storage_driver']} storage, "
            f"built in {image['build_s']} s, layer cache allowed): {_mb(image['image_bytes'])}, "
            f"of which the stand-in base {_mb(image['base_bytes'])} and ours "
            f"{_mb(image['added_bytes'])}:",
            "",
            "| layer (ours) | size |",
            "| --- | --- |",
            *(f"| `{layer['step'][:90]}` | {_mb(layer['bytes'])} |" for layer in image["layers"]),
            "",
        ]
    else:
        out += [f"Container image: {image['note']}.", ""]
    return out
