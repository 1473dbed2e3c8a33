"""The loaded bundles and the server's readiness: what the resources share.

Why readiness is separate from loading: gunicorn loads the bundles in the master (preload) before
forking, but the warm-up inference must run in the worker that serves (an onnxruntime call must
not be in flight across a fork). Until it has run, /readyz answers 503; issue 6's SIGTERM drain
flips it back with `begin_draining()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from server.config import Settings
from server.logs import seconds_since_exec

if TYPE_CHECKING:  # the real import happens in load_models, keeping this module cheap to import
    from bundle import ClassifierModel, LanguageModel

    Model = ClassifierModel | LanguageModel

log = logging.getLogger("server.runtime")


class ModelDirError(Exception):
    """MODEL_DIR is missing, empty, or holds two bundles for one task."""


@dataclass(frozen=True)
class LoadedModels:
    """Every bundle of MODEL_DIR by name, plus the one serving each task."""

    by_name: dict[str, Model]
    classifier: ClassifierModel | None
    language_model: LanguageModel | None


def load_failures() -> tuple[type[Exception], ...]:
    """What a bad MODEL_DIR raises: refuse to start on these, with their message, no traceback."""
    from bundle import BundleError
    from bundle.tokenizer import TokenizerError

    return (ModelDirError, BundleError, TokenizerError)


def bundle_dirs(model_dir: Path) -> list[Path]:
    """Sub-directories holding a manifest.json, in name order."""
    if not model_dir.is_dir():
        raise ModelDirError(f"MODEL_DIR {model_dir} is not a directory")
    found = sorted(p for p in model_dir.iterdir() if (p / "manifest.json").is_file())
    if not found:
        raise ModelDirError(f"MODEL_DIR {model_dir} holds no bundle (no */manifest.json)")
    return found


def load_models(settings: Settings) -> LoadedModels:
    """Verify and load every bundle; any bad bundle stops the server (BundleError propagates)."""
    from bundle import ClassifierModel, LanguageModel, load_bundle

    by_name: dict[str, Model] = {}
    by_task: dict[str, Model] = {}
    for directory in bundle_dirs(settings.model_dir):
        model = load_bundle(
            directory,
            threads=settings.ort_intra_op_threads,
            inter_threads=settings.ort_inter_op_threads,
        )
        manifest = model.manifest
        if manifest.name in by_name:
            raise ModelDirError(f"two bundles named {manifest.name!r} in {settings.model_dir}")
        if manifest.task in by_task:
            raise ModelDirError(
                f"two '{manifest.task}' bundles in {settings.model_dir}: "
                f"{by_task[manifest.task].manifest.name} and {manifest.name}"
            )
        by_name[manifest.name] = by_task[manifest.task] = model
    classifier = by_task.get("classify")
    language_model = by_task.get("generate")
    assert classifier is None or isinstance(classifier, ClassifierModel)
    assert language_model is None or isinstance(language_model, LanguageModel)
    return LoadedModels(by_name, classifier, language_model)


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

    def __init__(self, settings: Settings, models: LoadedModels) -> None:
        from server.batching import ClassifyBatcher, classifier_runner
        from server.limits import CLASSIFY_RUNS, AdmissionGate

        self.settings = settings
        # Issue 6 monitoring (server/monitoring.py): the models are swapped for instrumented ones
        # (metrics, drift window, shadow) before anything else keeps a reference to them.
        from server.monitoring import Monitoring

        self.monitoring = Monitoring(settings, models)
        self.models = models = self.monitoring.models
        self.readiness = Readiness()
        # Issue 6: at most WEB_THREADS requests admitted, each with a deadline (server/limits.py);
        # concurrent /classify requests share onnxruntime calls (server/batching.py).
        self.admission = AdmissionGate(settings.web_threads, settings.request_timeout_s)
        CLASSIFY_RUNS.configure(settings.classify_runs)
        self.classify_batcher: ClassifyBatcher | None = None
        if settings.microbatch and models.classifier is not None:
            self.classify_batcher = ClassifyBatcher(
                classifier_runner(models.classifier, settings.classify_max_tokens),
                settings.microbatch_max_texts,
                settings.microbatch_wait_ms / 1000,
            )
        self._warm_up_started = False
        self._warm_up_lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> ServerRuntime:
        started = time.perf_counter()
        models = load_models(settings)
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
