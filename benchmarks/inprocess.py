"""In-process timings on the same pinned core: what the HTTP numbers are compared against.

    python -m benchmarks.inprocess raw INPUTS.json --models DIR --repeats N   (JSON on stdout)
    python -m benchmarks.inprocess startup --models DIR                       (JSON on stdout)
    python -m benchmarks.inprocess session --models DIR          (a line protocol on stdin/stdout)

`raw`: for the very inputs the load generator sends, the bare onnxruntime `session.run` time
(ids and feed prepared beforehand), the tokenizer time, and the whole in-process path the
server runs (`predict_texts`; for generation `server.inference.generate.generate_texts` with the same
seeds, its LM steps timed separately). HTTP latency minus these is the server's own overhead.
Also the fp32 graph when the bundle ships one, and one LM step / one sampling step alone.

`session`: a worker for benchmarks/paired.py: reads a JSON list of reviews from its first input
line, says `ready`, then answers each line `K N` with the times (ms, JSON) of N bare session runs
of review K, so that they can be interleaved with HTTP requests to the server.

`startup`: a fresh interpreter's cold-start pieces, finer than the server's log: imports of
numpy, onnxruntime, gunicorn's arbiter and gthread worker, and Falcon, then per bundle manifest
verification (sha256), tokenizer tables, session creation (same options as the server) and
warm-up. Those four imports and the sessions, with a bare interpreter's start (the runner times
it), are what any server on this stack does before it can answer: the cold start's floor.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()
MS = 1e3
# The serving stack's own imports, in the server's order of need (gunicorn's arbiter, then the
# gthread worker, then Falcon); numpy and onnxruntime are timed apart.
STACK_IMPORTS = {
    "import_gunicorn_ms": ("gunicorn.app.base", "gunicorn.workers.gthread"),
    "import_falcon_ms": ("falcon",),
}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * MS, value


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


# ----------------------------------------------------------------------------- startup probe
def startup(models: Path) -> dict[str, Any]:
    from benchmarks.procfs import seconds_since_exec

    result: dict[str, Any] = {
        "interpreter_since_exec_s": seconds_since_exec(),
        "script_start_ms": round((time.perf_counter() - _T0) * MS, 3),
    }
    result["import_numpy_ms"], _ = _timed(lambda: __import__("numpy"))
    result["import_onnxruntime_ms"], _ = _timed(lambda: __import__("onnxruntime"))
    for key, modules in STACK_IMPORTS.items():
        result[key], _ = _timed(partial(_import_all, modules))
    result["import_bundle_ms"], _ = _timed(lambda: __import__("bundle"))
    import onnxruntime as ort

    from bundle import ClassifierModel, LanguageModel, load_manifest, session_options
    from bundle.runtime import PRE_OPTIMIZED_FORMATS
    from bundle.tokenizer import Tokenizer

    bundles = {}
    for directory in sorted(p.parent for p in models.glob("*/manifest.json")):
        row: dict[str, Any] = {}
        row["verify_manifest_ms"], manifest = _timed(lambda: load_manifest(directory))
        row["tokenizer_ms"], tokenizer = _timed(
            lambda: Tokenizer.from_file(manifest.tokenizer_path)
        )
        options = session_options(1, 1)
        if manifest.raw["model"].get("format", "onnx") in PRE_OPTIMIZED_FORMATS:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        row["session_ms"], session = _timed(
            lambda: ort.InferenceSession(
                str(manifest.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        )
        cls = ClassifierModel if manifest.task == "classify" else LanguageModel
        model = cls(manifest, tokenizer, session)
        row["warm_up_ms"], _ = _timed(model.warm_up)
        row["model_bytes"] = manifest.model_path.stat().st_size
        row["format"] = manifest.raw["model"].get("format", "onnx")
        bundles[manifest.name] = {
            k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()
        }
    result["bundles"] = bundles
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


# ----------------------------------------------------------------------------- raw timings
class TimedSteps:
    """A LanguageModel whose `step` calls (the onnxruntime runs) are timed; the rest forwards."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.step_ms = 0.0
        self.steps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def step(self, ids: Any, state: Any) -> Any:
        start = time.perf_counter()
        out = self._model.step(ids, state)
        self.step_ms += (time.perf_counter() - start) * MS
        self.steps += 1
        return out


def _stats(samples: list[float]) -> dict[str, Any]:
    from benchmarks.loadgen import latency_stats

    return {**latency_stats(samples), "samples_ms": [round(s, 4) for s in samples]}


def _plain_classifier(bundle_dir: Path) -> Any:
    """The classifier bundle with one graph (not an ensemble), warmed up, as the server runs it."""
    from bundle import ClassifierModel, load_bundle
    from bundle.classifier_rows import GraphRows

    model = load_bundle(bundle_dir, threads=1, inter_threads=1)
    assert isinstance(model, ClassifierModel), f"{bundle_dir} is not a classifier bundle"
    assert isinstance(model.rows, GraphRows), "one bundle's graph, not an ensemble"
    model.warm_up()
    return model


def classify_raw(bundle_dir: Path, reviews: dict[str, list[str]], repeats: int) -> dict[str, Any]:
    from bundle import load_bundle

    model = _plain_classifier(bundle_dir)
    fp32_path = bundle_dir / "model.fp32.onnx"
    fp32 = (
        load_bundle(bundle_dir, threads=1, inter_threads=1, model_path=fp32_path)
        if fp32_path.is_file()
        else None
    )
    out: dict[str, Any] = {"model": model.manifest.model_id}
    for band, texts in reviews.items():
        tokenize, session, whole, session_fp32, n_tokens = [], [], [], [], []
        feeds = []
        for text in texts:
            ids = model.tokenizer.encode(text)
            n_tokens.append(len(ids))
            feeds.append(model.rows.one_run_feed([ids]))
        for _ in range(repeats):
            for text, (names, feed) in zip(texts, feeds, strict=False):
                tokenize.append(_timed(lambda: model.tokenizer.encode(text))[0])
                session.append(_timed(lambda: model.session.run(names, feed))[0])
                whole.append(_timed(lambda: model.predict_texts([text]))[0])
        if fp32 is not None:
            fp32.warm_up()
            for names, feed in feeds:
                session_fp32.append(_timed(lambda: fp32.session.run(names, feed))[0])
        labels = [
            model.labels[int(row.argmax())] for row in (model.predict_texts([t])[0] for t in texts)
        ]
        out[band] = {
            "tokens": latency_stats_plain(n_tokens),
            "tokenize": _stats(tokenize),
            "session": _stats(session),
            "in_process": _stats(whole),
            "session_fp32": _stats(session_fp32) if session_fp32 else None,
            "labels": labels,
        }
    return out


def latency_stats_plain(values: list[int]) -> dict[str, Any]:
    import numpy as np

    data = np.asarray(values)
    return {"min": int(data.min()), "median": float(np.median(data)), "max": int(data.max())}


def generate_raw(
    bundle_dir: Path, bodies: dict[str, list[dict[str, Any]]], repeats: int
) -> dict[str, Any]:
    import numpy as np

    from bundle import LanguageModel, load_bundle
    from server.inference.generate import GenerationRequest, generate_texts
    from server.inference.sampling import Sampler, SamplingParams, make_rng

    model = load_bundle(bundle_dir, threads=1, inter_threads=1)
    assert isinstance(model, LanguageModel), f"{bundle_dir} is not a language model bundle"
    model.warm_up()
    out: dict[str, Any] = {"model": model.manifest.model_id}
    for workload, requests in bodies.items():
        whole, steps_only, n_steps = [], [], 0
        for _ in range(repeats):
            for body in requests:
                timed = TimedSteps(model)
                request = GenerationRequest(
                    body["prompt"],
                    body["n_words"],
                    body["n_samples"],
                    SamplingParams(),
                    body.get("seed"),
                )
                whole.append(_timed(lambda: generate_texts(timed, request))[0])
                steps_only.append(timed.step_ms)
                n_steps = timed.steps
        out[workload] = {
            "in_process": _stats(whole),
            "session_steps": _stats(steps_only),
            "steps_per_request": n_steps,
        }
    # One LM step and one sampling step alone, batch 5 (the reference figure).
    batch = 5
    ids = np.full((batch, 1), model.bos_id, dtype=np.int64)
    state = model.initial_state(batch)
    logits, state = model.step(ids, state)
    step_ms = [_timed(lambda: model.step(ids, state))[0] for _ in range(200)]
    rng = make_rng(0)
    sampler = Sampler(SamplingParams(), model.unk_id, *logits.shape)  # the server's sampler
    sample_ms = [_timed(lambda: sampler(logits, rng))[0] for _ in range(200)]
    out["lm_step_batch5"] = {k: v for k, v in _stats(step_ms).items() if k != "samples_ms"}
    out["sampling_batch5"] = {k: v for k, v in _stats(sample_ms).items() if k != "samples_ms"}
    return out


def bundle_dirs_by_task(models: Path) -> dict[str, Path]:
    return {json.loads(p.read_text())["task"]: p.parent for p in models.glob("*/manifest.json")}


def session_worker(models: Path) -> None:
    """The `session` line protocol: bare runs of the classifier, as `classify_raw` times them."""
    model = _plain_classifier(bundle_dirs_by_task(models)["classify"])
    texts = json.loads(sys.stdin.readline())
    feeds = [model.rows.one_run_feed([model.tokenizer.encode(text)]) for text in texts]
    print("ready", flush=True)
    for line in sys.stdin:
        index, count = (int(word) for word in line.split())
        names, feed = feeds[index]
        times = [_timed(lambda: model.session.run(names, feed))[0] for _ in range(count)]
        print(json.dumps(times), flush=True)


def raw(inputs_path: Path, models: Path, repeats: int) -> dict[str, Any]:
    spec = json.loads(inputs_path.read_text(encoding="utf-8"))
    result: dict[str, Any] = {}
    bundle_dirs = bundle_dirs_by_task(models)
    if "classify" in bundle_dirs:
        result["classify"] = classify_raw(bundle_dirs["classify"], spec["reviews"], repeats)
    if "generate" in bundle_dirs:
        result["generate"] = generate_raw(bundle_dirs["generate"], spec["generate_bodies"], repeats)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess")
    parser.add_argument("mode", choices=("raw", "startup", "session"))
    parser.add_argument("inputs", nargs="?", type=Path)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.mode == "startup":
        print(json.dumps(startup(args.models)))
    elif args.mode == "session":
        session_worker(args.models)
    else:
        if args.inputs is None:
            parser.error("raw needs the INPUTS.json file")
        print(json.dumps(raw(args.inputs, args.models, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
