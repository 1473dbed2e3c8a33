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
