"""Prometheus metrics without a client library: counters, gauges and histograms with labels,
rendered in the text exposition format (version 0.0.4) that Prometheus and Cloud Monitoring's
managed collection scrape.

Why hand-written: the serve image stays at four dependencies, and the part we need (thread-safe
counts, cumulative buckets, label escaping) is small. Metrics live in one process: with
WEB_WORKERS > 1 each scrape sees the worker that answered it (Cloud Run runs one worker).
The tests parse our output with the reference parser (prometheus_client, dev extra only).
"""

from __future__ import annotations

import bisect
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]
Sample = tuple[dict[str, str], float]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers without a decimal point, floats as repr, and the spellings Prometheus expects."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels_text(
    names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None
) -> str:
    pairs = [f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


class Metric:
    """One metric family: a name, a help line, a type and fixed label names."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class _Valued(Metric):
    """A family that keeps one number per label set (what counters and gauges share)."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def _add(self, amount: float, labels: dict[str, str]) -> None:
        self._add_key(amount, self._key(labels))

    def _add_key(self, amount: float, key: LabelValues) -> None:
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            f"{self.name}{_labels_text(self.labelnames, key)} {format_value(value)}"
            for key, value in items
        ]


class Counter(_Valued):
    """Only goes up (name it `..._total`)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        self._add(amount, labels)

    def labels(self, **labels: str) -> BoundCounter:
        """This counter for one label set, checked once: for per-request hot paths."""
        return BoundCounter(self, self._key(labels))


class BoundCounter:
    """A Counter's series for fixed labels (`Counter.labels`)."""

    __slots__ = ("_counter", "_key")

    def __init__(self, counter: Counter, key: LabelValues) -> None:
        self._counter = counter
        self._key = key

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        self._counter._add_key(amount, self._key)


class Gauge(_Valued):
    """Goes up and down (in-flight requests, queue depth)."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._add(-amount, labels)

    def labels(self, **labels: str) -> BoundGauge:
        """This gauge for one label set, checked once: for per-request hot paths."""
        return BoundGauge(self, self._key(labels))


class BoundGauge:
    """A Gauge's series for fixed labels (`Gauge.labels`)."""

    __slots__ = ("_gauge", "_key")

    def __init__(self, gauge: Gauge, key: LabelValues) -> None:
        self._gauge = gauge
        self._key = key

    def inc(self, amount: float = 1.0) -> None:
        self._gauge._add_key(amount, self._key)

    def dec(self, amount: float = 1.0) -> None:
        self._gauge._add_key(-amount, self._key)


class CallbackMetric(Metric):
    """A gauge (or counter) computed at scrape time (drift scores, process memory): nothing to
    keep in step with the thing it reports."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        collect: Callable[[], Iterable[Sample]],
        kind: str = "gauge",
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._collect = collect
        self.kind = kind

    def render(self) -> list[str]:
        lines = self.header()
        for labels, value in self._collect():
            key = self._key(labels)
            lines.append(f"{self.name}{_labels_text(self.labelnames, key)} {format_value(value)}")
        return lines


@dataclass
class _HistogramSeries:
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0
    count: int = 0


class Histogram(Metric):
    """Observations counted into buckets by upper bound (`le`), rendered cumulatively."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    ) -> None:
        super().__init__(name, help_text, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if len(set(bounds)) != len(bounds) or not bounds:
            raise ValueError(f"{name}: buckets must be distinct and non-empty")
        self.buckets = tuple(bounds)
        self._series: dict[LabelValues, _HistogramSeries] = {}

    def observe(self, value: float, **labels: str) -> None:
        self._observe_key(self._key(labels), (value,))

    def observe_many(self, values: Iterable[float], **labels: str) -> None:
        """One lock for a whole batch of observations (e.g. every text of a /classify batch)."""
        self._observe_key(self._key(labels), values)

    def labels(self, **labels: str) -> BoundHistogram:
        """This histogram for one label set, checked once: for per-request hot paths."""
        return BoundHistogram(self, self._key(labels))

    def _observe_key(self, key: LabelValues, values: Iterable[float]) -> None:
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _HistogramSeries([0] * (len(self.buckets) + 1))
            for value in values:
                if math.isnan(value):
                    continue
                series.counts[bisect.bisect_left(self.buckets, value)] += 1
                series.total += value
                series.count += 1

    def snapshot(self, **labels: str) -> tuple[list[int], float, int]:
        """(per-bucket counts, sum, count) of one series, for tests and summaries."""
        with self._lock:
            series = self._series.get(self._key(labels))
            if series is None:
                return [0] * (len(self.buckets) + 1), 0.0, 0
            return list(series.counts), series.total, series.count

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(
                (key, _HistogramSeries(list(s.counts), s.total, s.count))
                for key, s in self._series.items()
            )
        lines = self.header()
        for key, series in items:
            running = 0
            for bound, count in zip((*self.buckets, math.inf), series.counts, strict=True):
                running += count
                le = ("le", format_value(bound) if math.isinf(bound) else repr(bound))
                lines.append(
                    f"{self.name}_bucket{_labels_text(self.labelnames, key, le)} {running}"
                )
            labels = _labels_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {format_value(series.total)}")
            lines.append(f"{self.name}_count{labels} {series.count}")
        return lines


class BoundHistogram:
    """A Histogram's series for fixed labels (`Histogram.labels`)."""

    __slots__ = ("_histogram", "_key")

    def __init__(self, histogram: Histogram, key: LabelValues) -> None:
        self._histogram = histogram
        self._key = key

    def observe(self, value: float) -> None:
        self._histogram._observe_key(self._key, (value,))

    def observe_many(self, values: Iterable[float]) -> None:
        self._histogram._observe_key(self._key, values)


class Registry:
    """The metric families of one process, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: Metric) -> Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is registered twice")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labelnames)
        self.register(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    ) -> Histogram:
        metric = Histogram(name, help_text, labelnames, buckets)
        self.register(metric)
        return metric

    def callback(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        collect: Callable[[], Iterable[Sample]],
        kind: str = "gauge",
    ) -> CallbackMetric:
        metric = CallbackMetric(name, help_text, labelnames, collect, kind)
        self.register(metric)
        return metric

    def render(self) -> bytes:
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode("utf-8")


# Buckets. Latency: from a cached /healthz to a long /generate on one vCPU.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# The same edges as the reference histograms that export writes (export/evaluate.py), used here
# as upper bounds, so a dashboard can set live traffic beside the manifest's reference_stats.
INPUT_TOKEN_BUCKETS = (32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
UNK_RATE_BUCKETS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def _process_samples() -> dict[str, float]:
    """CPU time and current RSS (Linux /proc; elsewhere the peak RSS getrusage knows)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    samples = {"cpu_seconds_total": usage.ru_utime + usage.ru_stime}
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        samples["resident_memory_bytes"] = float(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        samples["resident_memory_bytes"] = float(usage.ru_maxrss * 1024)
    return samples


class ServerMetrics:
    """Every metric the server exports, by meaning; one instance per process (see create_app).

    Endpoint labels are route templates (`/v2/models/{name}/infer`), never raw paths, so a
    scanner probing random URLs cannot blow up the number of series.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.requests = r.counter(
            "http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ("endpoint", "method", "status"),
        )
        self.latency = r.histogram(
            "http_request_duration_seconds",
            "Time from request received to response sent (streams: to the last event).",
            ("endpoint", "method", "status"),
            LATENCY_BUCKETS,
        )
        self.in_flight = r.gauge("http_requests_in_flight", "Requests being handled right now.")
        self.inference_seconds = r.histogram(
            "model_inference_seconds",
            "Time in onnxruntime per session call.",
            ("model",),
            LATENCY_BUCKETS,
        )
        self.batch_size = r.histogram(
            "model_batch_size",
            "Rows per onnxruntime call (texts of a /classify batch, samples of a generation step).",
            ("model",),
            BATCH_BUCKETS,
        )
        self.coalesced_requests = r.histogram(
            "classify_coalesced_requests",
            "Requests sharing one micro-batched /classify call (MICROBATCH).",
            ("model",),
            BATCH_BUCKETS,
        )
        self.generated_tokens = r.counter(
            "model_generated_tokens_total", "Tokens sampled by the language model.", ("model",)
        )
        self.input_tokens = r.histogram(
            "model_input_tokens",
            "Tokens per classified text (xxbos included).",
            ("model",),
            INPUT_TOKEN_BUCKETS,
        )
        self.unk_rate = r.histogram(
            "model_input_unk_rate",
            "Share of a classified text's tokens that are xxunk (out of vocabulary).",
            ("model",),
            UNK_RATE_BUCKETS,
        )
        self.predictions = r.counter(
            "model_predictions_total", "Predicted labels.", ("model", "label")
        )
        self.confidence = r.histogram(
            "model_prediction_confidence",
            "Probability of the predicted label.",
            ("model",),
            CONFIDENCE_BUCKETS,
        )
        self.model_info = r.gauge(
            "model_info",
            "Loaded bundles (value 1), by name, version and task.",
            ("model", "version", "task"),
        )
        started = time.time()
        r.callback(
            "process_start_time_seconds",
            "Start of this process (Unix time).",
            (),
            lambda: [({}, started)],
        )
        r.callback(
            "process_resident_memory_bytes",
            "Resident memory of this process.",
            (),
            lambda: [({}, _process_samples()["resident_memory_bytes"])],
        )
        r.callback(
            "process_cpu_seconds_total",
            "User + system CPU time of this process.",
            (),
            lambda: [({}, _process_samples()["cpu_seconds_total"])],
            kind="counter",
        )

    def render(self) -> bytes:
        return self.registry.render()
