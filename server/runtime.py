"""Composition: the one place that builds a process's serving state from Settings. Loaded
bundles (server/inference/loading.py) -> instrumented by observability -> the classify service
and the admission gate; plus readiness and the warm-up.

Why readiness is separate from loading: gunicorn loads the bundles in the master (preload) before
forking, but the warm-up inference must run in the worker that serves (an onnxruntime call must
not be in flight across a fork). Until it has run, /readyz answers 503; the SIGTERM drain
(server/http/drain.py) flips it back with `begin_draining()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from server.config import Settings
from server.http.admission import AdmissionGate
from server.inference.classify import BatchingConfig, ClassifyService
from server.inference.generate import GenerateService
from server.inference.guards import CLASSIFY_RUNS, LM_RUNS
from server.inference.loading import ModelSet, load_models
from server.observability.logs import seconds_since_exec
from server.observability.monitoring import Monitoring

log = logging.getLogger("server.runtime")


@dataclass
class Readiness:
    """warming up -> ready -> draining; thread-safe because requests read it concurrently."""

    state: str = "warming up"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _move(self, new_state: str, allowed_from: tuple[str, ...]) -> bool:
        with self._lock:
            if self.state not in allowed_from:
                return False
            self.state = new_state
            return True

    def mark_ready(self) -> bool:
        return self._move("ready", ("warming up",))

    def mark_failed(self) -> bool:
        return self._move("failed to warm up", ("warming up",))

    def begin_draining(self) -> bool:
        return self._move("draining", ("warming up", "ready", "failed to warm up"))


class ServerRuntime:
    """Settings + loaded bundles + readiness: built once per process, shared by resources."""

    def __init__(self, settings: Settings, models: ModelSet) -> None:
        self.settings = settings
        # The models are swapped for instrumented ones (metrics, drift window, shadow) before
        # anything else keeps a reference to them.
        self.monitoring = Monitoring(settings, models)
        self.models = self.monitoring.models
        self.readiness = Readiness()
        # At most WEB_THREADS requests admitted, each with a deadline (server/http/admission.py);
        # concurrent classify requests share onnxruntime calls (server/inference/batching.py).
        self.admission = AdmissionGate(settings.web_threads, settings.request_timeout_s)
        CLASSIFY_RUNS.configure(settings.classify_runs)
        LM_RUNS.configure(settings.lm_runs)
        self.classify = ClassifyService(
            self.models,
            BatchingConfig(
                settings.microbatch,
                settings.microbatch_max_texts,
                settings.microbatch_wait_ms / 1000,
                settings.classify_max_tokens,
            ),
        )
        self.classify.listeners.append(self.monitoring.classified)
        self.monitoring.watch_batchers(self.classify.batchers)
        self.generate = GenerateService(self.models)
        self.generate.listeners.append(self.monitoring.generated)
        self._warm_up_started = False
        self._warm_up_lock = threading.Lock()

    def begin_draining(self) -> bool:
        """SIGTERM: /readyz to 503 (server/http/drain.py closes the gate too)."""
        return self.readiness.begin_draining()

    @classmethod
    def load(cls, settings: Settings) -> ServerRuntime:
        started = time.perf_counter()
        models = load_models(
            settings.model_dir,
            settings.ort_intra_op_threads,
            settings.ort_inter_op_threads,
            settings.default_classifier,
            settings.default_lm,
        )
        log.info(
            "models loaded",
            extra={
                "load_s": round(time.perf_counter() - started, 3),
                "since_exec_s": seconds_since_exec(),
                "models": sorted(m.manifest.model_id for m in models.by_name.values()),
            },
        )
        return cls(settings, models)

    def warm_up(self, exec_pid: int | None = None, exit_code_on_failure: int | None = None) -> None:
        """One inference per session (first-run allocations happen here, not in a request).

        `exec_pid` is the process whose start counts as the cold start (the gunicorn master).
        With `exit_code_on_failure` (the gunicorn worker) a failed warm-up ends the process with
        that code, which stops the gunicorn master too: never a half-loaded server.
        """
        if self.settings.warmup_delay_s:
            time.sleep(self.settings.warmup_delay_s)
        started = time.perf_counter()
        try:
            for model in self.models.by_name.values():
                model.warm_up()
        except Exception as exc:
            self.readiness.mark_failed()
            if exit_code_on_failure is None:
                log.exception("warm-up failed; /readyz stays 503")
                return
            log.critical(
                "warm-up failed; not serving these bundles",
                extra={"error": str(exc).splitlines()[0][:500]},
            )
            logging.shutdown()
            os._exit(exit_code_on_failure)
        self.readiness.mark_ready()
        log.info(
            "ready",
            extra={
                "warm_up_s": round(time.perf_counter() - started, 3),
                "since_exec_s": seconds_since_exec(exec_pid),
                "pid": os.getpid(),
            },
        )

    def start_warm_up(
        self, exec_pid: int | None = None, exit_code_on_failure: int | None = None
    ) -> None:
        """Warm up in a background thread (once per process): the port is already serving."""
        with self._warm_up_lock:
            if self._warm_up_started:
                return
            self._warm_up_started = True
        threading.Thread(
            target=self.warm_up, args=(exec_pid, exit_code_on_failure), name="warm-up", daemon=True
        ).start()
