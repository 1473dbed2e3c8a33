"""export/progress.py: count, rate and ETA; plain lines in a log, an in-place bar on a terminal."""

from __future__ import annotations

import io
import re

from export.progress import Progress, progress

LINE = re.compile(
    r"^evaluating \|[█-]{30}\| +\d+\.\d% (\d+)/(\d+) docs \[\d\d:\d\d<(\d\d:\d\d|--:--), [\d.]+ docs/s\]$"
)


def test_a_log_gets_plain_lines_and_a_final_one() -> None:
    out = io.StringIO()
    items = list(progress(range(5), "evaluating", unit="docs", stream=out))
    assert items == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert LINE.match(lines[-1]), lines[-1]
    assert LINE.match(lines[-1]).groups()[:2] == ("5", "5")  # type: ignore[union-attr]
    assert len(lines) <= 3  # a first line at most, never one per item within log_every_s


def test_a_log_line_every_interval() -> None:
    out = io.StringIO()
    with Progress(4, "evaluating", unit="docs", stream=out, log_every_s=0.0) as bar:
        for _ in range(4):
            bar.update()
    counts = [LINE.match(line).group(1) for line in out.getvalue().splitlines()]  # type: ignore[union-attr]
    assert counts == ["1", "2", "3", "4"]


def test_a_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    with Progress(3, "evaluating", unit="docs", stream=out, interactive=True) as bar:
        bar.update(3)
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert LINE.match(text.strip().split("\r")[-1])


def test_one_bar_shared_by_two_threads_counts_every_update() -> None:
    """export's fp32 and int8 evaluations run in two threads and report to one bar."""
    import threading

    stream = io.StringIO()
    bar = Progress(2000, "int8 and fp32 evaluation", unit="batches", stream=stream, log_every_s=0)
    workers = [threading.Thread(target=lambda: [bar.update() for _ in range(1000)]) for _ in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    bar.close()
    assert bar.done == 2000
    assert stream.getvalue().splitlines()[-1].startswith("int8 and fp32 evaluation")
    assert "2000/2000 batches" in stream.getvalue().splitlines()[-1]


def test_slow_steps_show_seconds_per_unit() -> None:
    bar = Progress(20, "validation", unit="batch", stream=io.StringIO())
    bar.started -= 80.0  # two batches done in 80 s
    bar.done = 2
    assert bar.line().endswith(", 40.0 s/batch]"), bar.line()
