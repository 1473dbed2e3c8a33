"""Shadow mode: a candidate classifier (SHADOW_MODEL_DIR) sees a fraction of /classify traffic
after the primary has answered; only its agreement and latency are kept, as metrics.

Why this shape: the primary answer must never wait for, or be changed by, the candidate. A
request only puts its texts and the primary's probabilities on a bounded queue (microseconds);
one background thread, at the lowest CPU priority, runs the candidate. When the candidate cannot
keep up, jobs are dropped and counted, never queued without bound. The primary's slowdown is
measured in tests/test_server_shadow.py and reported in docs/monitoring.md.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle import ClassifierModel, load_bundle
from server.inference.loading import ModelDirError
from server.observability.metrics import LATENCY_BUCKETS, ServerMetrics

log = logging.getLogger("server.shadow")

LOWEST_PRIORITY = 19  # nice value of the shadow thread (Linux applies it per thread)
DIFF_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class ShadowConfigError(ModelDirError):
    """SHADOW_MODEL_DIR does not hold exactly one classify bundle: refuse to start."""


def find_shadow_bundle(directory: Path) -> Path:
    """The bundle itself, or a MODEL_DIR-like folder holding exactly one bundle."""
    if (directory / "manifest.json").is_file():
        return directory
    if not directory.is_dir():
        raise ShadowConfigError(f"SHADOW_MODEL_DIR {directory} is not a directory")
    found = sorted(p for p in directory.iterdir() if (p / "manifest.json").is_file())
    if len(found) != 1:
        raise ShadowConfigError(
            f"SHADOW_MODEL_DIR {directory} must be one bundle or hold exactly one "
            f"(found {len(found)})"
        )
    return found[0]


def load_candidate(directory: Path, threads: int, inter_threads: int) -> ClassifierModel:
    """Verify and load the candidate like any bundle (hashes, vocab size): a bad one stops
    the server at start-up, before it takes traffic."""
    model = load_bundle(find_shadow_bundle(directory), threads=threads, inter_threads=inter_threads)
    if not isinstance(model, ClassifierModel):
        raise ShadowConfigError(
            f"SHADOW_MODEL_DIR {directory}: the candidate must be a classify bundle, "
            f"not '{model.manifest.task}'"
        )
    return model


@dataclass(frozen=True)
class ShadowJob:
    texts: tuple[str, ...]
    primary_labels: tuple[str, ...]  # the primary's label names, in its column order
    primary_probabilities: np.ndarray
    queued_at: float


class ShadowRunner:
    """Compares a candidate with the primary on a sampled fraction of classified texts."""

    def __init__(
        self,
        candidate: ClassifierModel,
        fraction: float,
        queue_size: int,
        metrics: ServerMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.candidate = candidate
        self.fraction = fraction
        self._queue: queue.Queue[ShadowJob] = queue.Queue(maxsize=queue_size)
        self._rng = rng or random.Random()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self._start_lock = threading.Lock()
        self.candidate_id = candidate.manifest.model_id
        r = metrics.registry
        self.sampled = r.counter(
            "shadow_sampled_total",
            "Requests sampled for the candidate (SHADOW_FRACTION).",
            ("candidate",),
        )
        self.jobs = r.counter(
            "shadow_jobs_total",
            "Sampled /classify requests by what became of them in shadow: "
            "compared, dropped (queue full) or failed.",
            ("candidate", "outcome"),
        )
        self.texts = r.counter(
            "shadow_texts_total",
            "Texts the candidate classified, by agreement with the primary.",
            ("candidate", "agreement"),
        )
        self.latency = r.histogram(
            "shadow_inference_seconds",
            "Candidate time per job (tokenizing + onnxruntime).",
            ("candidate",),
            LATENCY_BUCKETS,
        )
        self.delay = r.histogram(
            "shadow_queue_seconds",
            "Time a job waited between the primary's answer and the candidate's start.",
            ("candidate",),
            LATENCY_BUCKETS,
        )
        self.diff = r.histogram(
            "shadow_probability_diff",
            "Largest |candidate - primary| probability over the labels both models have, per text.",
            ("candidate",),
            DIFF_BUCKETS,
        )
        r.callback(
            "shadow_agreement_ratio",
            "Share of compared texts on which the candidate "
            "predicted the primary's label (NaN before the first).",
            ("candidate",),
            lambda: [({"candidate": self.candidate_id}, self.agreement())],
        )
        r.callback(
            "shadow_queue_depth",
            "Jobs waiting for the candidate.",
            ("candidate",),
            lambda: [({"candidate": self.candidate_id}, float(self._queue.qsize()))],
        )
        r.callback(
            "shadow_fraction",
            "Configured share of /classify requests sent to the candidate (SHADOW_FRACTION).",
            ("candidate",),
            lambda: [({"candidate": self.candidate_id}, self.fraction)],
        )

    # ------------------------------------------------------------------ request side
    def submit(
        self, texts: Sequence[str], primary_labels: Sequence[str], primary_probabilities: np.ndarray
    ) -> bool:
        """Sample this request and queue it for the candidate; never blocks."""
        if self.fraction <= 0 or (self.fraction < 1 and self._rng.random() >= self.fraction):
            return False
        self.sampled.inc(candidate=self.candidate_id)
        self._ensure_thread()
        job = ShadowJob(
            tuple(texts),
            tuple(primary_labels),
            np.array(primary_probabilities),
            time.perf_counter(),
        )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.jobs.inc(candidate=self.candidate_id, outcome="dropped")
            return False
        return True

    def _ensure_thread(self) -> None:
        """Start the worker lazily, in the process that serves (gunicorn forks after load)."""
        pid = os.getpid()
        if self._thread is not None and self._thread_pid == pid and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or self._thread_pid != pid or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
                self._thread_pid = pid
                self._thread.start()

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        try:  # lowest CPU priority: the primary's threads win the core whenever they want it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        except (AttributeError, OSError):
            log.warning("could not lower the shadow thread's priority")
        try:
            self.candidate.warm_up()
        except Exception:
            log.exception("shadow candidate failed to warm up")
        while True:
            job = self._queue.get()
            try:
                self._compare(job)
            except Exception:
                self.jobs.inc(candidate=self.candidate_id, outcome="failed")
                log.exception("shadow comparison failed", extra={"candidate": self.candidate_id})
            finally:
                self._queue.task_done()

    def _compare(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        self.delay.observe(started - job.queued_at, candidate=self.candidate_id)
        ids = [self.candidate.tokenizer.encode(text) for text in job.texts]
        probabilities = self.candidate.predict_ids(ids, calibrated=True)  # as it would be served
        self.latency.observe(time.perf_counter() - started, candidate=self.candidate_id)
        labels = self.candidate.labels
        common = [
            (job.primary_labels.index(label), index)
            for index, label in enumerate(labels)
            if label in job.primary_labels
        ]
        agree = 0
        diffs: list[float] = []
        for primary_row, candidate_row in zip(
            job.primary_probabilities, probabilities, strict=True
        ):
            if job.primary_labels[int(primary_row.argmax())] == labels[int(candidate_row.argmax())]:
                agree += 1
            if common:
                diffs.append(
                    max(abs(float(primary_row[p]) - float(candidate_row[c])) for p, c in common)
                )
        self.texts.inc(agree, candidate=self.candidate_id, agreement="agree")
        self.texts.inc(len(job.texts) - agree, candidate=self.candidate_id, agreement="disagree")
        self.diff.observe_many(diffs, candidate=self.candidate_id)
        self.jobs.inc(candidate=self.candidate_id, outcome="compared")

    # ------------------------------------------------------------------ reporting
    def agreement(self) -> float:
        agree = self.texts.value(candidate=self.candidate_id, agreement="agree")
        total = agree + self.texts.value(candidate=self.candidate_id, agreement="disagree")
        return agree / total if total else float("nan")

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued job is done (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def summary(self) -> dict[str, object]:
        """The shadow part of GET /models."""
        agreement = self.agreement()
        outcome = {
            name: int(self.jobs.value(candidate=self.candidate_id, outcome=name))
            for name in ("compared", "dropped", "failed")
        }
        return {
            "candidate": self.candidate_id,
            "fraction": self.fraction,
            "jobs": outcome,
            "queued": self._queue.qsize(),
            "agreement": None if agreement != agreement else round(agreement, 6),
        }
