"""Progress for long steps (export evaluations, tokenize, rebuild, benchmark runs).

fastai users expect a bar with count, rate and ETA. On a terminal this draws one in place (like
fastprogress); in a log (CI, `nohup`, a pipe) a carriage-return bar would be noise, so it prints
a plain line at most every `log_every_s` seconds and one at the end. Standard library only, so
training/, export/ and benchmarks/ share it without pulling anything in.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

BAR_WIDTH = 30


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Counts done units of `total` and reports them; use as a context manager or call close()."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "it",
        stream: TextIO | None = None,
        log_every_s: float = 10.0,
        interactive: bool | None = None,
    ) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        # A terminal redraws cheaply; a log gets a line only this often.
        self.every_s = 0.1 if self.interactive else log_every_s
        self.done = 0
        self.started = time.perf_counter()
        self._last = self.started
        self._closed = False
        self._lock = threading.Lock()  # export's fp32 and int8 evaluations share one bar

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(left) if left == left else "--:--"
        share = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * min(share, 1.0))
        bar = "█" * filled + "-" * (BAR_WIDTH - filled)
        # below one a second, seconds per unit (as tqdm does): "40.2 s/batch", not "0.0 batch/s"
        speed = f"{1 / rate:.1f} s/{self.unit}" if 0 < rate < 1 else f"{rate:.1f} {self.unit}/s"
        return (
            f"{self.label} |{bar}| {share:6.1%} {self.done}/{self.total} {self.unit} "
            f"[{_duration(elapsed)}<{eta}, {speed}]"
        )

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if now - self._last >= self.every_s or self.done >= self.total:
                self._last = now
                self._emit(final=False)

    def _emit(self, final: bool) -> None:
        if self.interactive:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        elif final or self.done < self.total:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    items: Iterable[T],
    label: str,
    total: int | None = None,
    unit: str = "it",
    stream: TextIO | None = None,
) -> Iterator[T]:
    """Yield from `items`, reporting each one; `total` defaults to len(items)."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    with Progress(total, label, unit=unit, stream=stream) as bar:
        for item in items:
            yield item
            bar.update()
