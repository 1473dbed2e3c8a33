"""PNG plots of a results dict: latency distributions and cold-start phases (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.analysis import cold_summary
from benchmarks.servers import NAIVE, OURS

COLORS = {OURS: "#1f77b4", NAIVE: "#d62728"}
LABELS = {OURS: "ours (ONNX int8 + Falcon)", NAIVE: "naive (fastai learn.predict)"}


def latency_plot(results: dict[str, Any], prefix: str, path: Path) -> Path | None:
    """Box plots of per-request latency (log scale), one group per workload, at each concurrency."""
    cells = {
        s: [c for c in results["latency"][s]["cells"] if c["workload"].startswith(prefix)]
        for s in (OURS, NAIVE)
    }
    if not cells[OURS]:
        return None
    concurrencies = sorted({c["concurrency"] for c in cells[OURS]})
    workloads = list(dict.fromkeys(c["workload"] for c in cells[OURS]))
    fig, axes = plt.subplots(
        1, len(concurrencies), figsize=(4.2 * len(concurrencies), 4.2), sharey=True, squeeze=False
    )
    for ax, concurrency in zip(axes[0], concurrencies, strict=False):
        data, positions, colors, missing = [], [], [], []
        for i, workload in enumerate(workloads):
            for j, server in enumerate((OURS, NAIVE)):
                row = next(
                    (
                        c
                        for c in cells[server]
                        if c["workload"] == workload and c["concurrency"] == concurrency
                    ),
                    None,
                )
                samples = row["samples_ms"] if row and row["samples_ms"] else [float("nan")]
                data.append(samples)
                positions.append(i * 3 + j)
                colors.append(COLORS[server])
                if not row or not row["samples_ms"]:
                    missing.append((i * 3 + j, server))
        boxes = ax.boxplot(
            data, positions=positions, widths=0.8, patch_artist=True, showfliers=True, whis=(5, 95)
        )
        for patch, color in zip(boxes["boxes"], colors, strict=False):
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        for position, server in missing:  # a cell skipped (predicted too long) or empty
            ax.text(
                position,
                0.5,
                "skipped",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="center",
                va="center",
                fontsize=8,
                color=COLORS[server],
            )
        ax.set_xticks([i * 3 + 0.5 for i in range(len(workloads))])
        ax.set_xticklabels([w.replace(prefix, "").strip() or w for w in workloads])
        ax.set_yscale("log")
        ax.set_title(f"concurrency {concurrency}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("latency per request, ms (log)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[s], alpha=0.6) for s in (OURS, NAIVE)]
    fig.legend(handles, [LABELS[s] for s in (OURS, NAIVE)], loc="upper center", ncol=2)
    fig.suptitle(
        f"/{prefix} over HTTP, one pinned core (whiskers p5-p95)", y=0.01, va="bottom", fontsize=9
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cold_start_plot(results: dict[str, Any], path: Path) -> Path:
    """Stacked phases (median of the runs) for each server and probe, full scale and ours zoomed."""
    summary = cold_summary(results["cold_start"])
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    bars = [
        (kind, server) for kind in summary for server in (NAIVE, OURS) if server in summary[kind]
    ]
    cmap = plt.get_cmap("tab20")
    for ax, which in ((full, bars), (zoom, [b for b in bars if b[1] == OURS])):
        seen_labels: set[str] = set()
        for y, (kind, server) in enumerate(which):
            row = summary[kind][server]
            phases = row["phases_median_s"] or {"total (no phase log)": row["median_s"]}
            left = 0.0
            for k, (phase, seconds) in enumerate(phases.items()):
                color = cmap((k * 2 + (0 if server == OURS else 1)) % 20)
                label = f"{server}: {phase}"
                ax.barh(
                    y,
                    seconds,
                    left=left,
                    color=color,
                    label=label if label not in seen_labels else None,
                )
                seen_labels.add(label)
                left += seconds
            ax.plot([row["median_s"]], [y], "k|", markersize=14)
            ax.errorbar(
                [row["median_s"]],
                [y],
                xerr=[[row["median_s"] - row["min_s"]], [row["max_s"] - row["median_s"]]],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
        ax.set_yticks(range(len(which)))
        ax.set_yticklabels([f"{server}\nfirst /{kind}" for kind, server in which], fontsize=8)
        ax.set_xlabel(
            "seconds since exec"
            if ax is zoom
            else "seconds since exec (bars: median phases; |: median total, min-max)"
        )
        ax.grid(True, axis="x", alpha=0.3)
    full.set_title("cold start, both servers")
    zoom.set_title("ours, zoomed")
    handles, labels = full.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def batch_curve_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Session ms per review against batch size (one line per length) and against length."""
    rows = (results.get("roofline") or {}).get("batch_curve")
    if not rows:
        return None
    lengths = sorted({r["length"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    at = {(r["length"], r["batch"]): r["ms_per_review"] for r in rows}
    fig, (by_batch, by_length) = plt.subplots(1, 2, figsize=(10, 4.2))
    for length in lengths:
        by_batch.plot(
            batches, [at[length, b] for b in batches], marker="o", label=f"{length} tokens"
        )
    by_batch.set(xscale="log", yscale="log", xlabel="batch size (equal lengths)")
    by_batch.set(ylabel="session ms per review", title="per review, against batch size")
    by_batch.set_xticks(batches, [str(b) for b in batches])
    by_batch.legend(fontsize=8)
    for batch in batches:
        by_length.plot(lengths, [at[n, batch] for n in lengths], marker="o", label=f"batch {batch}")
    by_length.set(xscale="log", yscale="log", xlabel="review length (tokens)")
    by_length.set(title="per review, against length")
    by_length.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [
        latency_plot(results, "classify", out_dir / "latency_classify.png"),
        latency_plot(results, "generate", out_dir / "latency_generate.png"),
        cold_start_plot(results, out_dir / "cold_start.png"),
        batch_curve_plot(results, out_dir / "batch_curve.png"),
    ]
    return [p for p in made if p is not None]
