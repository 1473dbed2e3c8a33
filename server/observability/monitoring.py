"""The observability of one process, built once (`ServerRuntime.monitoring`): the metrics
registry, the instrumented models, a drift monitor per classifier, the optional shadow candidate
and the request middleware. `GET /metrics` renders them, `GET /models` adds drift and shadow.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from bundle import ClassifierModel
from server.config import Settings
from server.inference.batching import BatchObserver, ClassifyBatcher
from server.inference.loading import Model, ModelSet
from server.observability.drift import DriftMonitor
from server.observability.instrumented import ObservedClassifier, ObservedLanguageModel
from server.observability.metrics import ServerMetrics
from server.observability.requests import RequestMonitor
from server.observability.shadow import ShadowConfigError, ShadowRunner, load_candidate


class Monitoring:
    """Metrics registry, observed models, drift monitors and the shadow candidate of one process.

    Built by ServerRuntime before anything else takes a reference to the models (the classify
    service does), so every model call in the process is measured.
    """

    def __init__(self, settings: Settings, models: ModelSet) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.drift: dict[str, DriftMonitor] = {}
        self._watched: set[int] = set()
        observed: dict[str, Model] = {}
        for name, model in models.by_name.items():
            manifest = model.manifest
            self.metrics.model_info.set(
                1, model=manifest.model_id, version=manifest.version, task=manifest.task
            )
            if isinstance(model, ClassifierModel):
                drift = DriftMonitor.for_manifest(
                    manifest, settings.drift_window, settings.drift_min_documents
                )
                if drift is not None:
                    self.drift[name] = drift
                observed[name] = ObservedClassifier(model, self.metrics, drift)
            else:
                observed[name] = ObservedLanguageModel(model, self.metrics)
        self.models = models.replaced(observed)
        self.metrics.registry.callback(
            "drift_psi",
            "Population stability index of live traffic (last DRIFT_WINDOW texts) "
            "against the bundle's reference_stats; absent until DRIFT_MIN_DOCUMENTS texts.",
            ("model", "statistic"),
            self._drift_samples,
        )
        self.metrics.registry.callback(
            "drift_window_documents",
            "Texts in the drift window.",
            ("model",),
            lambda: [({"model": d.model_id}, float(d.documents())) for d in self.drift.values()],
        )
        primary = self.models.default_classifier
        self.shadow = self._load_shadow(settings, self.models.by_name.get(primary or ""))
        route_models = {}
        if primary is not None:
            route_models["/classify"] = self.models.by_name[primary].manifest.model_id
        if self.models.default_language_model is not None:
            lm_id = self.models.by_name[self.models.default_language_model].manifest.model_id
            route_models["/generate"] = route_models["/"] = lm_id
        self.middleware = RequestMonitor(
            self.metrics, route_models, settings.request_log, settings.server_timing
        )

    def _load_shadow(self, settings: Settings, primary: Model | None) -> ShadowRunner | None:
        """The candidate of SHADOW_MODEL_DIR, compared with the default classifier."""
        if settings.shadow_model_dir is None:
            return None
        if primary is None:
            raise ShadowConfigError(
                "SHADOW_MODEL_DIR is set but MODEL_DIR has no classifier "
                "to compare the candidate with"
            )
        candidate = load_candidate(
            settings.shadow_model_dir, settings.ort_intra_op_threads, settings.ort_inter_op_threads
        )
        logging.getLogger("server.shadow").info(
            "shadow candidate loaded",
            extra={
                "candidate": candidate.manifest.model_id,
                "primary": primary.manifest.model_id,
                "fraction": settings.shadow_fraction,
            },
        )
        return ShadowRunner(
            candidate, settings.shadow_fraction, settings.shadow_queue, self.metrics
        )

    def _drift_samples(self) -> list[tuple[dict[str, str], float]]:
        samples = []
        for drift in self.drift.values():
            for statistic, score in drift.scores().items():
                if score is not None:
                    samples.append(({"model": drift.model_id, "statistic": statistic}, score))
        return samples

    def watch_batchers(self, batchers: dict[str, ClassifyBatcher]) -> None:
        """Count how many requests each micro-batched call served (server/inference/batching.py)."""
        for name, batcher in batchers.items():
            if id(batcher) in self._watched:
                continue
            self._watched.add(id(batcher))
            model_id = self.models.by_name[name].manifest.model_id
            batcher.observers.append(self._coalesced_observer(model_id))

    def _coalesced_observer(self, model_id: str) -> BatchObserver:
        def observe(requests: int, texts: int, seconds: float) -> None:
            self.metrics.coalesced_requests.observe(requests, model=model_id)

        return observe

    # ------------------------------------------------------------------ hooks
    def classified(
        self, model: ClassifierModel, texts: list[str], probabilities: np.ndarray
    ) -> None:
        """After a classification by the default classifier: hand it to the shadow candidate."""
        if self.shadow is not None and model.manifest.name == self.models.default_classifier:
            self.shadow.submit(texts, model.labels, probabilities)

    def generated(self, model_id: str, tokens: int) -> None:
        self.metrics.generated_tokens.inc(tokens, model=model_id)

    def model_status(self, name: str) -> dict[str, Any]:
        """Live additions to a model's entry in GET /models: drift scores, shadow comparison."""
        status: dict[str, Any] = {}
        drift = self.drift.get(name)
        if drift is not None:
            status["drift"] = drift.summary()
        if self.shadow is not None and name == self.models.default_classifier:
            status["shadow"] = self.shadow.summary()
        return status
