"""The export pipeline, top to bottom: learner -> graph -> ONNX fp32 -> int8 -> checks -> bundle.

One path for every learner, the user's `.pkl` and this project's own runs alike. Each stage's
figures go into the manifest; a check out of bounds raises ExportError and no bundle is written
(the staging directory is only renamed into place when everything passed, and removed if not).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bundle import ClassifierModel, LanguageModel, load_bundle
from bundle.classifier_rows import GraphRows
from bundle.manifest import write_manifest

from . import evaluate
from .eval_data import EvalData, EvalDataError, generated
from .learner import LearnerFacts, learner_facts, text_ids
from .onnx_graphs import OPSET, ExportError, export_chunked_classifier, export_lm, quantize
from .progress import Progress, progress
from .session_format import choose_session_format
from .staging import staged_bundle
from .tokenizer_tables import parity_mismatches, write_tokenizer_json
from .torch_modules import ChunkedClassifierGraph, LanguageModelGraph

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """Export fails when a measurement falls outside these (issue contract; do not loosen)."""

    max_abs_diff_fp32: float = 1e-4  # fp32 ONNX vs torch, probabilities / logits
    min_argmax_agreement: float = 0.99  # int8 vs fp32
    max_accuracy_drop: float = 0.005  # int8 vs fp32 classifier accuracy (fraction)
    max_perplexity_ratio: float = 1.02  # int8 LM perplexity / fp32


def _versions() -> dict[str, str]:
    import fastai
    import spacy

    return {
        "fastai": fastai.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "spacy": spacy.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def _io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def describe(items: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": i.name,
                "dtype": i.type.replace("tensor(", "").replace(")", ""),
                "shape": [d if isinstance(d, str) else int(d) for d in i.shape],
            }
            for i in items
        ]

    return describe(sess.get_inputs()), describe(sess.get_outputs())


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ExportError(message)


PARITY_TEXTS = {"classify": 16, "generate": 8}  # fp32 ONNX vs torch, one text at a time
GENERATED_TEXTS = 64  # int8 vs fp32 when no held-out data is given
SINGLE_RUN_TEXTS = 64  # int8 vs fp32 also one text at a time, as a server answers a request
LM_PARITY_TOKENS = 64


CHUNK_PARITY_TOKENS = 7  # per row: the padded batch is also fed in chunks this narrow


def _classifier_parity(
    learn: Any, graph: ChunkedClassifierGraph, fp32: Path, ids: list[list[int]]
) -> dict[str, Any]:
    """fp32 ONNX vs the fastai model on the same ids: one text at a time in one chunk, the texts
    as one padded batch in one chunk, and that batch in narrow chunks with the state carried
    (rows leaving as their texts end), each fed as the server feeds it (bundle.classifier_rows.GraphRows)."""
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    rows = GraphRows(sess, graph.pad_id, backwards=False)  # ids are already in the model's order
    model = learn.model.eval()
    activate = torch.sigmoid if graph.activation == "sigmoid" else partial(torch.softmax, dim=-1)
    max_diff = 0.0
    singles = []
    with torch.no_grad():
        for seq in progress(ids, "parity fp32 ONNX vs torch", unit="texts"):
            model.reset()
            ref = activate(model(torch.tensor([seq]))[0]).numpy()
            out = rows([seq])
            singles.append(out[0])
            max_diff = max(max_diff, float(np.abs(ref - out).max()))
    single = np.stack(singles)
    chunked = rows(ids, max_tokens=CHUNK_PARITY_TOKENS * len(ids))
    return {
        "texts": len(ids),
        "longest_tokens": max(len(s) for s in ids),
        "max_abs_diff_vs_torch": max_diff,
        "max_abs_diff_padded_vs_single": float(np.abs(rows(ids) - single).max()),
        "max_abs_diff_chunked_vs_single": float(np.abs(chunked - single).max()),
        "chunk_tokens_per_row": CHUNK_PARITY_TOKENS,
    }


def _lm_parity(learn: Any, fp32: Path, ids: list[list[int]], sizes: list[int]) -> dict[str, Any]:
    """fp32 ONNX vs the fastai LM: whole prompt in one call, and token by token with state carried."""
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    model = learn.model.eval()

    def zeros() -> dict[str, np.ndarray]:
        return {
            n: np.zeros((1, 1, s), np.float32)
            for i, s in enumerate(sizes)
            for n in (f"h{i}", f"c{i}")
        }

    names = [f"{n}{i}_out" for i in range(len(sizes)) for n in ("h", "c")]
    max_diff, step_diff = 0.0, 0.0
    with torch.no_grad():
        for seq in progress(ids, "parity fp32 ONNX vs torch", unit="texts"):
            model.reset()
            ref = model(torch.tensor([seq]))[0][0, -1].numpy()
            whole = sess.run(["logits"], {"input_ids": np.array([seq], np.int64), **zeros()})[0][0]
            max_diff = max(max_diff, float(np.abs(ref - whole).max()))
            state = zeros()
            for tok in seq:
                logits, *new = sess.run(
                    ["logits", *names], {"input_ids": np.array([[tok]], np.int64), **state}
                )
                state = {k.replace("_out", ""): v for k, v in zip(names, new, strict=True)}
            step_diff = max(step_diff, float(np.abs(logits[0] - whole).max()))
    return {
        "texts": len(ids),
        "max_abs_diff_vs_torch": max_diff,
        "max_abs_diff_stepwise_vs_whole": step_diff,
    }


def _check_tokenizer(staging: Path, texts: list[str]) -> dict[str, Any]:
    """tokenizer.json must give fastai's own tokens on the check texts (spaCy + rules replayed)."""
    tables = json.loads((staging / "tokenizer.json").read_text(encoding="utf-8"))
    mismatches = parity_mismatches(tables, texts)
    if mismatches:
        first = mismatches[0]
        raise ExportError(
            f"tokenizer.json disagrees with fastai on {len(mismatches)} of {len(texts)} texts, "
            f"e.g. text {first['index']}: {first['ours'][:12]} vs {first['fastai'][:12]}"
        )
    return {"texts": len(texts), "mismatches": 0}


def _size(path: Path) -> int:
    return path.stat().st_size


def _manifest(
    name: str, version: str, facts: LearnerFacts, source: dict[str, Any], fp32: Path
) -> dict[str, Any]:
    inputs, outputs = _io(fp32)
    raw: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": facts.task,
        **facts.manifest_keys(),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": facts.architecture(),
        "model": {
            "file": "model.onnx",
            "quantization": "dynamic-int8",
            "opset": OPSET,
            "inputs": inputs,
            "outputs": outputs,
        },
        "tokenizer": {"file": "tokenizer.json"},
        "sources": _versions(),
        "source": source,
    }
    if facts.task == "generate":
        raw["states"] = [
            {"h": f"h{i}", "c": f"c{i}", "h_out": f"h{i}_out", "c_out": f"c{i}_out", "size": s}
            for i, s in enumerate(facts.layer_sizes)
        ]
    return raw


def _finish(
    staging: Path, manifest: dict[str, Any], keep_fp32: bool, int8: Path, fp32: Path
) -> None:
    """Pick the fastest-loading equivalent model file, write the manifest, verify by loading."""
    choice = choose_session_format(int8, staging)
    manifest["metrics"]["session_load_ms"] = choice["measurements"]
    manifest["model"]["file"] = choice["file"]
    manifest["model"]["format"] = choice["format"]
    if choice["file"] != int8.name:
        int8.unlink()
    files = [choice["file"], "tokenizer.json"]
    if keep_fp32:
        files.append(fp32.name)
    else:
        fp32.unlink()
    manifest["files"] = {f: {} for f in files}
    write_manifest(staging, manifest)
    load_bundle(staging).warm_up()  # the written bundle must load with the server's own reader


def _provisional(staging: Path, manifest: dict[str, Any], int8: Path, fp32: Path) -> tuple:
    """Write a manifest over both model files so the runtime reader (what the server runs)
    loads each; every later measurement goes through it."""
    manifest["files"] = {int8.name: {}, "tokenizer.json": {}, fp32.name: {}}
    write_manifest(staging, manifest)
    return load_bundle(staging), load_bundle(staging, model_path=fp32)


def _encode(model: ClassifierModel | LanguageModel, texts: list[str]) -> list[list[int]]:
    """The check texts through the bundle's tokenizer (25,000 IMDB reviews take minutes)."""
    return [model.tokenizer.encode(t) for t in progress(texts, "tokenize", unit="texts")]


def _timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    t0 = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t0


def export_learner(
    learn: Any,
    out_dir: Path,
    name: str,
    version: str,
    *,
    source: dict[str, Any],
    eval_data: EvalData | None = None,
    training: dict[str, Any] | None = None,
    bounds: Bounds = Bounds(),
    keep_fp32: bool = False,
) -> Path:
    """A fastai learner -> a verified bundle in out_dir/name. `eval_data` held-out texts (and
    labels for a classifier); without it the checks run on texts made from the vocabulary.
    Raises UnsupportedLearner before writing anything, ExportError when a check fails."""
    facts = learner_facts(learn)
    with staged_bundle(out_dir, name) as staging:
        build = _build_classifier if facts.task == "classify" else _build_lm
        manifest = build(learn, facts, staging, name, version, source, eval_data, bounds)
        if training is not None:
            manifest["training"] = training
        _finish(staging, manifest, keep_fp32, staging / "model.onnx", staging / "model.fp32.onnx")
    return out_dir / name


def _graph_files(
    graph: torch.nn.Module, staging: Path, export: Callable[..., None], n_lstm: int
) -> tuple[Path, Path, dict[str, Any], float]:
    fp32, int8 = staging / "model.fp32.onnx", staging / "model.onnx"
    t0 = time.perf_counter()
    export(graph, fp32)
    quant = quantize(fp32, int8, n_lstm)
    return fp32, int8, quant, time.perf_counter() - t0


def _build_lm(
    learn: Any,
    facts: LearnerFacts,
    staging: Path,
    name: str,
    version: str,
    source: dict[str, Any],
    eval_data: EvalData | None,
    bounds: Bounds,
) -> dict[str, Any]:
    data = eval_data or generated(facts.vocab, GENERATED_TEXTS)
    graph = LanguageModelGraph(learn.model)
    fp32, int8, quant, export_seconds = _graph_files(
        graph, staging, export_lm, len(facts.layer_sizes)
    )
    write_tokenizer_json(facts.vocab, staging / "tokenizer.json")
    parity_texts = data.texts[: PARITY_TEXTS["generate"]]
    tokenizer_check = _check_tokenizer(staging, parity_texts)
    ids = [seq[:LM_PARITY_TOKENS] for seq in text_ids(learn, parity_texts)]
    parity = _lm_parity(learn, fp32, ids, facts.layer_sizes)
    _check(
        parity["max_abs_diff_vs_torch"] <= bounds.max_abs_diff_fp32,
        f"LM fp32 ONNX differs from torch by {parity['max_abs_diff_vs_torch']:.2e} > {bounds.max_abs_diff_fp32}",
    )
    _check(
        parity["max_abs_diff_stepwise_vs_whole"] <= bounds.max_abs_diff_fp32,
        f"LM stepwise state carry differs by {parity['max_abs_diff_stepwise_vs_whole']:.2e}",
    )
    manifest = _manifest(name, version, facts, source, fp32)
    m_int8, m_fp32 = _provisional(staging, manifest, int8, fp32)
    assert isinstance(m_int8, LanguageModel) and isinstance(m_fp32, LanguageModel)
    docs = _encode(m_int8, data.texts)
    model_docs = [d[::-1] for d in docs] if facts.backwards else docs  # the LM reads ids reversed
    ppl_fp32 = evaluate.lm_perplexity(m_fp32, model_docs, label="perplexity fp32")
    ppl_int8 = evaluate.lm_perplexity(m_int8, model_docs, label="perplexity int8")
    ratio = ppl_int8["perplexity"] / ppl_fp32["perplexity"]
    _check(
        ratio <= bounds.max_perplexity_ratio,
        f"int8 LM perplexity {ppl_int8['perplexity']:.2f} is {100 * (ratio - 1):.2f}% above fp32 {ppl_fp32['perplexity']:.2f}",
    )
    evaluation: dict[str, Any] = {
        "held_out": data.held_out,
        "data": data.description,
        "documents": len(docs),
    }
    if data.held_out:
        evaluation.update({"fp32": ppl_fp32, "int8": ppl_int8})
    manifest["metrics"] = {
        "tokenizer": tokenizer_check,
        "parity": parity,
        "quantization": {
            **quant,
            "perplexity_ratio_int8_vs_fp32": ratio,
            "compared_on": data.description,
        },
        "evaluation": evaluation,
        "sizes": {"fp32_bytes": _size(fp32), "int8_bytes": _size(int8)},
        "export_seconds": round(export_seconds, 2),
        "bounds": bounds.__dict__,
    }
    manifest["reference_stats"] = evaluate.reference_stats(docs, m_int8.unk_id)
    return manifest


def _answers(probs: np.ndarray, facts: LearnerFacts) -> np.ndarray:
    """Boolean [texts, labels]: what fastai's predict decodes (above threshold, or the argmax)."""
    if facts.threshold is not None:
        return probs > facts.threshold
    return np.eye(len(facts.labels), dtype=bool)[probs.argmax(1)]


def _targets(labels: list[list[str]], facts: LearnerFacts) -> np.ndarray:
    index = {label: i for i, label in enumerate(facts.labels)}
    target = np.zeros((len(labels), len(facts.labels)), dtype=bool)
    for row, names in enumerate(labels):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise EvalDataError(
                f"held-out row {row} has label {unknown[0]!r}, which the learner does not know "
                f"(its labels: {facts.labels})"
            )
        if not facts.multi_label and len(names) != 1:
            raise EvalDataError(f"held-out row {row} needs exactly one label, has {names}")
        target[row, [index[n] for n in names]] = True
    return target


def _accuracy(answers: np.ndarray, target: np.ndarray, multi_label: bool) -> float:
    """fastai's metric: `accuracy` (single label) or `accuracy_multi` (every label decision)."""
    if multi_label:
        return float((answers == target).mean())
    return float((answers.argmax(1) == target.argmax(1)).mean())


def _classify_both(
    m_fp32: ClassifierModel, m_int8: ClassifierModel, docs: list[list[int]]
) -> tuple[np.ndarray, float, np.ndarray, float]:
    """fp32 and int8 side by side (each session runs on one thread and releases the GIL), one
    progress line for both."""
    batches = -(-len(docs) // evaluate.BATCH_SIZE)
    with (
        Progress(2 * batches, "int8 and fp32 evaluation", unit="batches") as bar,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        timed = [
            pool.submit(_timed, evaluate.classify_ids, m, docs, on_batch=bar.update)
            for m in (m_fp32, m_int8)
        ]
        (p_fp32, s_fp32), (p_int8, s_int8) = (f.result() for f in timed)
    return p_fp32, s_fp32, p_int8, s_int8


def _build_classifier(
    learn: Any,
    facts: LearnerFacts,
    staging: Path,
    name: str,
    version: str,
    source: dict[str, Any],
    eval_data: EvalData | None,
    bounds: Bounds,
) -> dict[str, Any]:
    activation = "sigmoid" if facts.multi_label else "softmax"
    graph = ChunkedClassifierGraph(learn.model, activation=activation)
    long_words = graph.max_len + graph.bptt + 5 if graph.max_len else 0
    data = eval_data or generated(facts.vocab, GENERATED_TEXTS, long_words=long_words)
    if data.held_out and data.labels is None:
        raise EvalDataError("a classifier's held-out data needs labels (--label-col)")
    target = _targets(data.labels, facts) if data.labels is not None else None
    fp32, int8, quant, export_seconds = _graph_files(
        graph, staging, export_chunked_classifier, len(facts.layer_sizes)
    )
    write_tokenizer_json(facts.vocab, staging / "tokenizer.json")
    n = PARITY_TEXTS["classify"]  # the first texts and the last two (the long generated ones)
    parity_texts = data.texts if len(data.texts) <= n else data.texts[: n - 2] + data.texts[-2:]
    tokenizer_check = _check_tokenizer(staging, parity_texts)
    parity = _classifier_parity(learn, graph, fp32, text_ids(learn, parity_texts))
    for key in (
        "max_abs_diff_vs_torch",
        "max_abs_diff_padded_vs_single",
        "max_abs_diff_chunked_vs_single",
    ):
        _check(
            parity[key] <= bounds.max_abs_diff_fp32,
            f"classifier {key} = {parity[key]:.2e} > {bounds.max_abs_diff_fp32}",
        )
    manifest = _manifest(name, version, facts, source, fp32)
    m_int8, m_fp32 = _provisional(staging, manifest, int8, fp32)
    assert isinstance(m_int8, ClassifierModel) and isinstance(m_fp32, ClassifierModel)
    docs, tokenize_seconds = _timed(_encode, m_int8, data.texts)
    p_fp32, s_fp32, p_int8, s_int8 = _classify_both(m_fp32, m_int8, docs)
    for kind, probs in (("fp32", p_fp32), ("int8", p_int8)):
        bad = int(np.count_nonzero(~np.isfinite(probs).all(axis=1)))
        _check(bad == 0, f"{kind} classifier gave non-finite probabilities for {bad} documents")
    single_diff = max(
        float(np.abs(m_int8.predict_ids([d]) - m_fp32.predict_ids([d])).max())
        for d in docs[:SINGLE_RUN_TEXTS]
    )
    a_fp32, a_int8 = _answers(p_fp32, facts), _answers(p_int8, facts)
    agreement = float((a_fp32 == a_int8).all(axis=1).mean())
    _check(
        agreement >= bounds.min_argmax_agreement,
        f"int8 vs fp32 answer agreement {agreement:.4f} < {bounds.min_argmax_agreement}",
    )
    evaluation: dict[str, Any] = {
        "held_out": data.held_out,
        "data": data.description,
        "documents": len(docs),
    }
    if target is not None:
        acc_fp32 = _accuracy(a_fp32, target, facts.multi_label)
        acc_int8 = _accuracy(a_int8, target, facts.multi_label)
        _check(
            acc_fp32 - acc_int8 <= bounds.max_accuracy_drop,
            f"int8 accuracy {acc_int8:.4f} drops {100 * (acc_fp32 - acc_int8):.2f} pt below fp32 {acc_fp32:.4f}",
        )
        evaluation.update(
            {
                "metric": "accuracy_multi" if facts.multi_label else "accuracy",
                "accuracy_fp32": acc_fp32,
                "accuracy_int8": acc_int8,
                "accuracy_drop_pt": round(100 * (acc_fp32 - acc_int8), 3),
            }
        )
    evaluation["seconds"] = {
        "tokenize": round(tokenize_seconds, 1),
        "fp32": round(s_fp32, 1),
        "int8": round(s_int8, 1),
        "fp32_and_int8_concurrently": True,
    }
    manifest["metrics"] = {
        "tokenizer": tokenizer_check,
        "parity": parity,
        "quantization": {
            **quant,
            "answer_agreement_int8_vs_fp32": agreement,
            "max_abs_diff_probabilities_int8_vs_fp32": max(
                float(np.abs(p_fp32 - p_int8).max()), single_diff
            ),
            "compared_on": data.description,
        },
        "evaluation": evaluation,
        "sizes": {"fp32_bytes": _size(fp32), "int8_bytes": _size(int8)},
        "export_seconds": round(export_seconds, 2),
        "bounds": bounds.__dict__,
    }
    if not facts.multi_label:
        manifest["metrics"]["quantization"]["argmax_agreement_int8_vs_fp32"] = agreement
    manifest["reference_stats"] = evaluate.reference_stats(
        docs, m_int8.unk_id, p_int8, facts.labels
    )
    return manifest
