"""Fit a one-cycle schedule to wall-clock seconds: a GPU lent for minutes, not epochs.

A short probe at a low learning rate measures seconds per training batch on the real data and
hardware; the schedule then takes as many (possibly partial) epochs as fit what is left, so the
learning rate still anneals to its end. A guard stops training outright if the estimate was wrong.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from fastai.text.all import Callback, CancelFitException, CancelValidException

from .schedule import fit_one_cycle

VALID_BATCH_COST = 0.4  # a validation batch (forward only) relative to a training batch
SAFETY = 0.92  # plan for this share of the seconds left: data loading and validation vary
PROBE_BATCHES = 30
PROBE_WARMUP = 6  # cuDNN autotuning and allocator warm-up batches, not timed
GUARD_GRACE = 0.1  # the deadline guard lets a fit run this share of its budget past the deadline
# A run given a wall-clock limit (`--finish-by`) splits the seconds it has left after start-up:
FINISH_SHARE = 0.15  # kept for what follows the budgets: validations, saving, a late guard,
FINISH_S = 10.0  # and 10 s more: building the classifier's data takes seconds whatever the size
LM_SHARE = 0.78  # of the rest, the LM's; the classifier gets the remainder (390 s : 110 s proved
#                  a good split on the 2026-12-04 GPU run: LM perplexity 41.2, classifier 92.5 %)


@dataclass(frozen=True)
class TimeBudget:
    until: float  # time.monotonic() deadline

    @classmethod
    def seconds(cls, s: float) -> TimeBudget:
        return cls(time.monotonic() + s)

    def left(self) -> float:
        return self.until - time.monotonic()


def split_time_left(seconds_left: float) -> tuple[float, float]:
    """(LM seconds, classifier seconds) for a run that must be done `seconds_left` from now."""
    usable = max(0.0, seconds_left - FINISH_S) * (1 - FINISH_SHARE)
    return usable * LM_SHARE, usable * (1 - LM_SHARE)


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class _Probe(Callback):
    """Stops after a few timed batches and skips validation."""

    order = -20

    def __init__(self, n_batches: int) -> None:
        self.n_batches = n_batches
        self.stamps: list[float] = []

    def after_batch(self) -> None:
        self.stamps.append(_now())
        if len(self.stamps) >= self.n_batches:
            raise CancelFitException

    def before_validate(self) -> None:
        raise CancelValidException


class DeadlineGuard(Callback):
    """Ends the fit once the deadline plus a grace is passed: a slower-than-probed run still
    stops in time to save its weights."""

    def __init__(self, budget: TimeBudget, grace_s: float) -> None:
        self.budget, self.grace_s, self.stopped = budget, grace_s, False

    def after_batch(self) -> None:
        if self.budget.left() < -self.grace_s:
            self.stopped = True
            raise CancelFitException


def seconds_per_batch(learn: Any, lr: float | slice) -> float:
    """Train PROBE_BATCHES batches at a tenth of the learning rate and time the last ones."""
    low = slice(lr.start / 10, lr.stop / 10) if isinstance(lr, slice) else lr / 10
    probe = _Probe(min(PROBE_BATCHES, len(learn.dls.train)))
    with learn.no_bar():
        learn.fit(1, low, cbs=[probe])
    stamps = probe.stamps[min(PROBE_WARMUP, len(probe.stamps) - 2) :]
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)


def plan(
    seconds_left: float, spb: float, n_train: int, n_valid: int, max_epochs: int
) -> tuple[int, float]:
    """(epochs, fraction of each epoch) that fit seconds_left; each epoch validates in full."""
    valid_s = n_valid * spb * VALID_BATCH_COST
    full_epoch_s = n_train * spb + valid_s
    affordable = seconds_left * SAFETY / full_epoch_s
    epochs = max(1, min(max_epochs, math.ceil(affordable)))
    if affordable >= epochs:
        return epochs, 1.0
    fraction = (seconds_left * SAFETY / epochs - valid_s) / (n_train * spb)
    return epochs, min(1.0, max(0.02, fraction))


def fit_budgeted(
    learn: Any, max_epochs: int, lr: float | slice, budget: TimeBudget, label: str = "fit"
) -> dict[str, Any]:
    """Probe, plan, then the usual one-cycle fit over the planned (partial) epochs. Returns the schedule."""
    spb = seconds_per_batch(learn, lr)
    n_train, n_valid = len(learn.dls.train), len(learn.dls.valid)
    epochs, fraction = plan(budget.left(), spb, n_train, n_valid, max_epochs)
    guard = DeadlineGuard(budget, grace_s=max(1.0, GUARD_GRACE * budget.left()))
    print(
        f"budget: {budget.left():.0f} s left, {spb * 1000:.1f} ms/batch, {n_train} batches/epoch "
        f"-> {epochs} epoch(s) x {fraction:.3f}",
        file=sys.stderr,
        flush=True,
    )
    fit_one_cycle(learn, epochs, lr, fraction, extra_cbs=[guard], label=label)
    return {
        "epochs": epochs,
        "epoch_fraction": round(fraction, 4),
        "probe_ms_per_batch": round(spb * 1000, 2),
        "batches_per_epoch": n_train,
        "stopped_by_deadline": guard.stopped,
    }
