"""How a learner is fitted and validated: ULMFiT's one-cycle schedule, optionally on part of each
epoch, with progress a user can read. On a terminal fastai draws its own fastprogress bars; in a
log (a lent GPU machine's output, CI, `nohup`) those would be carriage-return noise, so each epoch
reports plain lines through export/progress.py (batches done, rate, ETA) and one line of named
figures at its end."""

from __future__ import annotations

import sys
from typing import Any

from fastai.text.all import Callback, CancelTrainException

from export.progress import Progress

MOMS = (0.8, 0.7, 0.8)  # ULMFiT's momentum schedule


def on_terminal() -> bool:
    """fastprogress draws on stdout: its bars only where stdout is a terminal."""
    return sys.stdout.isatty()


class PartialEpoch(Callback):
    """Train on the first `fraction` of each epoch's batches with the one-cycle schedule compressed
    to that length (ShortEpochCallback would stop at the schedule's peak learning rate)."""

    order = -20  # before TrainEvalCallback and ParamScheduler read n_iter

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def before_batch(self) -> None:
        if self.training and self.iter == 0:
            self.learn.n_iter = max(1, int(len(self.dl) * self.fraction))

    def after_batch(self) -> None:
        if self.training and self.iter + 1 >= self.learn.n_iter:
            raise CancelTrainException


class PlainProgress(Callback):
    """fastai's ProgressCallback for a log: a Progress per training and validation pass, and
    each epoch's figures as one line with their names (fastai without its bar prints a bare list)."""

    order = 65  # after fastai's Recorder (50), which calls learn.logger with the epoch's figures

    def __init__(self, label: str, per_epoch: bool = True) -> None:
        self.label, self.per_epoch = label, per_epoch
        self._bar: Progress | None = None
        self._old_logger: Any = None

    def before_fit(self) -> None:  # learn.validate() calls it too, with logging off: leave that
        if self.per_epoch:
            self._old_logger, self.learn.logger = self.learn.logger, self._log_epoch

    def after_fit(self) -> None:
        if self.per_epoch:
            self.learn.logger = self._old_logger
        self._close()

    def _phase(self) -> str:
        if not self.per_epoch:
            return self.label
        n_epoch = self.learn.n_epoch
        epoch = f" epoch {self.learn.epoch + 1}/{n_epoch}" if n_epoch > 1 else ""
        return f"{self.label}{epoch} {'train' if self.training else 'valid'}"

    def after_batch(self) -> None:
        if self._bar is None:  # n_iter is final only once the first batch has started
            self._bar = Progress(self.learn.n_iter, self._phase(), unit="batch")
        self._bar.update()

    def after_train(self) -> None:
        self._close()

    def after_validate(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _log_epoch(self, values: list[Any]) -> None:
        names, values = list(self.learn.recorder.metric_names), list(values)
        if len(values) < len(names) and "train_loss" in names:
            # PartialEpoch ends training by cancelling it, and fastai then logs no training
            # loss for the epoch: report the smoothed loss of its last batch
            values.insert(names.index("train_loss"), float(self.learn.smooth_loss))
        parts = [
            f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
            for name, value in zip(names, values, strict=False)
            if name != "epoch"
        ]
        print(f"{self.label} epoch {values[0] + 1}: " + ", ".join(parts), flush=True)


def fit_one_cycle(
    learn: Any,
    epochs: int,
    lr: float | slice,
    fraction: float = 1.0,
    extra_cbs: list[Callback] | None = None,
    label: str = "fit",
) -> None:
    """One-cycle fit with ULMFiT's momentums. `fraction` < 1 trains on part of each epoch
    (PartialEpoch), validating on the whole validation set."""
    cbs = [*(extra_cbs or []), *([PartialEpoch(fraction)] if fraction < 1 else [])]
    if on_terminal():
        learn.fit_one_cycle(epochs, lr, moms=MOMS, cbs=cbs)
    else:
        with learn.no_bar():
            learn.fit_one_cycle(epochs, lr, moms=MOMS, cbs=[*cbs, PlainProgress(label)])


def validate(learn: Any, label: str = "validate") -> list[float]:
    """learn.validate() with the same progress as a fit: (loss, *metrics) as floats."""
    if on_terminal():
        values = learn.validate()
    else:
        with learn.no_bar():
            values = learn.validate(cbs=[PlainProgress(label, per_epoch=False)])
    return [float(v) for v in values]
