"""Pick the model file that builds an onnxruntime session fastest, with identical outputs.

Candidates: the plain int8 ONNX (optimized by onnxruntime at every load), the same graph saved
after onnxruntime's offline optimization (loaded with optimization off), and the ORT format
(flatbuffer, also pre-optimized). Session creation is on the server's cold-start path.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bundle.runtime import session_options

from .progress import progress

REPEATS = 7


def _probe_feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    feed: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = np.array([[2, 9, 12, 15, 20, 8, 11, 3]], dtype=np.int64)
        elif i.name == "lengths":
            feed[i.name] = np.array([8], dtype=np.int64)
        elif i.name == "offset":  # a chunked classifier's first position
            feed[i.name] = np.array([0], dtype=np.int64)
        else:  # carried state: LSTM [1, batch, size], a chunked classifier's pooling [batch, n]
            shape = (1, 1, int(i.shape[2])) if len(i.shape) == 3 else (1, int(i.shape[1]))
            feed[i.name] = np.full(shape, 0.1, dtype=np.float32)
    return feed


def _load_ms(path: Path, level: ort.GraphOptimizationLevel) -> tuple[float, list[np.ndarray]]:
    times = []
    for _ in range(REPEATS + 1):
        opts = session_options()
        opts.graph_optimization_level = level
        t0 = time.perf_counter()
        sess = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        times.append(1000 * (time.perf_counter() - t0))
    outputs = sess.run(None, _probe_feed(sess))
    return statistics.median(times[1:]), outputs


def choose_session_format(int8: Path, directory: Path) -> dict[str, Any]:
    optimized, ort_file = directory / "model.opt.onnx", directory / "model.ort"
    for target, fmt in ((optimized, None), (ort_file, "ORT")):
        opts = session_options()
        # EXTENDED, not ALL: ALL adds layout rewrites tuned to this CPU; the bundle must run on others
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(target)
        if fmt:
            opts.add_session_config_entry("session.save_model_format", fmt)
        ort.InferenceSession(str(int8), sess_options=opts, providers=["CPUExecutionProvider"])
    candidates = {
        "onnx": (int8, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        "onnx-optimized": (optimized, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        "ort": (ort_file, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    }
    results: dict[str, dict[str, Any]] = {}
    reference = None
    timing = progress(
        candidates.items(), "session load timing", total=len(candidates), unit="formats"
    )
    for fmt, (path, level) in timing:
        ms, outputs = _load_ms(path, level)
        if reference is None:
            reference = outputs
        same = all(np.allclose(a, b, atol=1e-5) for a, b in zip(reference, outputs, strict=False))
        results[fmt] = {
            "median_ms": round(ms, 2),
            "bytes": path.stat().st_size,
            "same_outputs": bool(same),
        }
    best = min(
        (f for f in results if results[f]["same_outputs"]), key=lambda f: results[f]["median_ms"]
    )
    for fmt, (path, _) in candidates.items():
        if fmt != best and path != int8:
            path.unlink()
    return {"format": best, "file": candidates[best][0].name, "measurements": results}
