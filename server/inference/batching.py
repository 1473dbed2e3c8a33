"""Micro-batching of /classify: requests that arrive together share one onnxruntime call.

Why: on one core, one call over 8 reviews costs much less than 8 calls over one (the LSTM's
matrix products get wider, the per-call overhead is paid once); BENCHMARKS.md has the figures.

How, without a batching thread: the first request to arrive becomes the *leader* and runs the
queue in the caller's own thread; requests arriving while it computes queue up and go into the
next call together. With the queue empty a lone request runs at once (no timer, no hand-off),
so latency at concurrency 1 is unchanged. A leader stops leading as soon as its own result is
in and hands the queue to the oldest waiting request, so nobody works for others forever.
A request whose deadline passes while queued leaves the queue (504) before any work is spent
on it; a running call is terminated only when every request in it has expired.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from server.inference.errors import BatchFailed, DeadlineExceeded
from server.inference.guards import RequestBudget

# run_batch(ids, deadline, timeout_s) -> probabilities, one row per sequence
RunBatch = Callable[[Sequence[Sequence[int]], float, float], np.ndarray]
BatchObserver = Callable[[int, int, float], None]  # (requests, texts, seconds) per call

_QUEUED, _RUNNING, _DONE, _ABANDONED = "queued", "running", "done", "abandoned"


class _Job:
    __slots__ = ("budget", "error", "event", "ids", "promoted", "result", "state")

    def __init__(self, ids: Sequence[Sequence[int]], budget: RequestBudget) -> None:
        self.ids = ids
        self.budget = budget
        self.event = threading.Event()
        self.state = _QUEUED
        self.promoted = False
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class ClassifyBatcher:
    """Coalesces concurrent `predict` calls into calls of at most `max_texts` sequences."""

    def __init__(self, run_batch: RunBatch, max_texts: int, wait_s: float = 0.0) -> None:
        self._run_batch = run_batch
        self.max_texts = max_texts
        self.wait_s = wait_s
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._leading = False
        self._last_requests = 1  # requests in the previous call: how many to wait for (_take)
        self.observers: list[BatchObserver] = []

    def predict(self, ids: Sequence[Sequence[int]], budget: RequestBudget) -> np.ndarray:
        """Probabilities for `ids`, computed in whichever call takes them (maybe with others)."""
        with self._cond:
            # Nobody leading and nothing queued (concurrency 1): this request is the whole next
            # call, so it runs as one without a job, an event or the queue (`_run_alone`). Not
            # when the last call coalesced several and MICROBATCH_WAIT_MS asks to wait for more.
            alone = (
                not self._leading
                and not self._queue
                and (self.wait_s <= 0 or self._last_requests <= 1)
            )
            if alone:
                self._leading = True
                self._last_requests = 1
            else:
                job = _Job(ids, budget)
                self._queue.append(job)
                lead = not self._leading
                self._leading = True
                self._cond.notify_all()  # a leader waiting out MICROBATCH_WAIT_MS sees it
        if alone:
            return self._run_alone(ids, budget)
        if lead or self._follow(job):
            self._lead(job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run_alone(self, ids: Sequence[Sequence[int]], budget: RequestBudget) -> np.ndarray:
        """A call of one request, as `_lead` + `_run` would make it (same deadline, errors and
        observers); requests arriving meanwhile queue and are handed over to at the end."""
        try:
            budget.check()  # expired before any work is spent: 504
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return self._run_batch(ids, budget.deadline, budget.timeout_s)
            except DeadlineExceeded:
                error = DeadlineExceeded(budget.timeout_s)
            except Exception as exc:
                error = BatchFailed("the coalesced classify call failed")
                error.__cause__ = exc
            finally:
                seconds = time.perf_counter() - started
                for observe in self.observers:
                    observe(1, len(ids), seconds)
            raise error
        finally:
            self._hand_over()

    # ------------------------------------------------------------------ follower
    def _follow(self, job: _Job) -> bool:
        """Wait for the result; True if promoted to leader before it came."""
        while True:
            job.event.wait(max(job.budget.remaining(), 0.0))
            with self._cond:
                if job.promoted:
                    job.promoted = False
                    job.event.clear()
                    return True
                if job.state == _DONE:
                    return False
                if job.budget.expired():
                    if job.state == _QUEUED:
                        self._queue.remove(job)
                    job.state = _ABANDONED  # a running call's answer for it is dropped
                    job.error = DeadlineExceeded(job.budget.timeout_s)
                    return False

    # ------------------------------------------------------------------ leader
    def _lead(self, job: _Job) -> None:
        try:
            while True:
                with self._cond:
                    if job.state in (_DONE, _ABANDONED):
                        return
                    if job.budget.expired():  # still queued: leave before any work is spent
                        self._queue.remove(job)
                        job.state = _ABANDONED
                        job.error = DeadlineExceeded(job.budget.timeout_s)
                        return
                    batch = self._take()
                if batch:
                    self._run(batch)
        finally:
            self._hand_over()

    def _take(self) -> list[_Job]:
        """Jobs for the next call, oldest first (caller holds the lock). Expired ones are told.

        When the previous call coalesced several requests, wait up to `wait_s` for as many to queue
        (or `max_texts` texts):
        under steady concurrency its requests' clients send their next ones right after their
        answers, and without the wait the first to return runs alone while the rest queue behind
        it (calls of 1, 7, 1, 7 requests at concurrency 8 instead of 8, 8). After a call of one
        request (concurrency 1) nothing waits."""
        want = self._last_requests
        if self.wait_s > 0 and want > 1:
            until = time.monotonic() + self.wait_s
            while len(self._queue) < want and self._queued_texts() < self.max_texts:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        batch: list[_Job] = []
        texts = 0
        while self._queue:
            nxt = self._queue[0]
            if nxt.budget.expired():
                self._queue.popleft()
                nxt.state = _ABANDONED
                nxt.error = DeadlineExceeded(nxt.budget.timeout_s)
                nxt.event.set()
                continue
            if batch and texts + len(nxt.ids) > self.max_texts:
                break
            self._queue.popleft()
            nxt.state = _RUNNING
            batch.append(nxt)
            texts += len(nxt.ids)
        if batch:
            self._last_requests = len(batch)
        return batch

    def _queued_texts(self) -> int:
        return sum(len(job.ids) for job in self._queue)

    def _run(self, batch: list[_Job]) -> None:
        ids = [seq for job in batch for seq in job.ids]
        latest = max(job.budget.deadline for job in batch)
        timeout_s = max(job.budget.timeout_s for job in batch)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            probabilities = self._run_batch(ids, latest, timeout_s)
        except DeadlineExceeded:
            error = DeadlineExceeded(timeout_s)
        except Exception as exc:  # shared by every job: each raises its own wrapper
            error = exc
        seconds = time.perf_counter() - started
        with self._cond:
            row = 0
            for job in batch:
                if job.state == _RUNNING:
                    if error is None:
                        job.result = probabilities[row : row + len(job.ids)]
                    elif isinstance(error, DeadlineExceeded):
                        job.error = DeadlineExceeded(job.budget.timeout_s)
                    else:
                        job.error = BatchFailed("the coalesced classify call failed")
                        job.error.__cause__ = error
                    job.state = _DONE
                job.event.set()
                row += len(job.ids)
        for observe in self.observers:
            observe(len(batch), len(ids), seconds)

    def _hand_over(self) -> None:
        """Give the queue to its oldest request, or stop leading when it is empty."""
        with self._cond:
            if self._queue:
                nxt = self._queue[0]
                nxt.promoted = True
                nxt.event.set()
            else:
                self._leading = False

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._queue), "leading": self._leading}
