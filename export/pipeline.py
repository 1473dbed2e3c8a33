"""The export pipeline, top to bottom: learners -> graphs -> ONNX fp32 -> int8 -> checks -> bundle.

Each stage's figures go into the manifest; a check out of bounds raises ExportError and no
bundle is written (the staging directory is only renamed into place when everything passed).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bundle import ClassifierModel, LanguageModel, load_bundle
from bundle.manifest import write_manifest

from . import evaluate
from .onnx_graphs import OPSET, ExportError, export_classifier, export_lm, quantize
from .session_format import choose_session_format
from .tokenizer_tables import write_tokenizer_json
from .torch_modules import ClassifierGraph, LanguageModelGraph, layer_sizes

T = TypeVar("T")


@dataclass(frozen=True)
class Bounds:
    """Export fails when a measurement falls outside these (issue contract; do not loosen)."""

    max_abs_diff_fp32: float = 1e-4  # fp32 ONNX vs torch, probabilities / logits
    min_argmax_agreement: float = 0.99  # int8 vs fp32
    max_accuracy_drop: float = 0.005  # int8 vs fp32 classifier accuracy (fraction)
    max_perplexity_ratio: float = 1.02  # int8 LM perplexity / fp32


@dataclass
class EvalData:
    """Held-out texts for the checks: never used for training (the IMDB test split)."""

    texts: list[str]
    labels: list[str]
    lm_texts: list[str] = field(default_factory=list)


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


def _fastai_ids(vocab: list[str], texts: list[str]) -> list[list[int]]:
    """Token ids as fastai makes them (its tokenizer + Numericalize): the torch side of parity."""
    from fastai.text.all import Numericalize, SpacyTokenizer, Tokenizer, defaults

    tokenizer = Tokenizer(SpacyTokenizer(), rules=defaults.text_proc_rules)
    numericalize = Numericalize(vocab=vocab)
    return [numericalize(tokenizer(t)).tolist() for t in texts]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ExportError(message)


def _classifier_parity(
    learn: Any, graph: ClassifierGraph, fp32: Path, ids: list[list[int]]
) -> dict[str, Any]:
    """fp32 ONNX vs the fastai model on the same ids, one review at a time and padded as a batch."""
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    model = learn.model.eval()
    max_diff, pad_diff = 0.0, 0.0
    singles = []
    with torch.no_grad():
        for seq in ids:
            model.reset()
            ref = torch.softmax(model(torch.tensor([seq]))[0], -1).numpy()
            out = sess.run(
                None,
                {"input_ids": np.array([seq], dtype=np.int64), "lengths": np.array([len(seq)])},
            )[0]
            singles.append(out[0])
            max_diff = max(max_diff, float(np.abs(ref - out).max()))
    width = max(len(s) for s in ids)
    batch = np.full((len(ids), width), graph.pad_id, dtype=np.int64)
    for i, seq in enumerate(ids):
        batch[i, : len(seq)] = seq
    padded = sess.run(None, {"input_ids": batch, "lengths": np.array([len(s) for s in ids])})[0]
    pad_diff = float(np.abs(padded - np.stack(singles)).max())
    return {
        "texts": len(ids),
        "max_abs_diff_vs_torch": max_diff,
        "max_abs_diff_padded_vs_single": pad_diff,
    }


def _lm_parity(learn: Any, fp32: Path, ids: list[list[int]], sizes: list[int]) -> dict[str, Any]:
    """fp32 ONNX vs the fastai LM: whole prompt in one call, and token by token with state carried."""
    sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    model = learn.model.eval()

    def zeros():
        return {
            n: np.zeros((1, 1, s), np.float32)
            for i, s in enumerate(sizes)
            for n in (f"h{i}", f"c{i}")
        }

    names = [f"{n}{i}_out" for i in range(len(sizes)) for n in ("h", "c")]
    max_diff, step_diff = 0.0, 0.0
    with torch.no_grad():
        for seq in ids:
            model.reset()
            ref = model(torch.tensor([seq]))[0][0, -1].numpy()
            whole = sess.run(["logits"], {"input_ids": np.array([seq], np.int64), **zeros()})[0][0]
            max_diff = max(max_diff, float(np.abs(ref - whole).max()))
            state = zeros()
            for tok in seq:
                logits, *new = sess.run(
                    ["logits", *names], {"input_ids": np.array([[tok]], np.int64), **state}
                )
                state = {k.replace("_out", ""): v for k, v in zip(names, new, strict=False)}
            step_diff = max(step_diff, float(np.abs(logits[0] - whole).max()))
    return {
        "texts": len(ids),
        "max_abs_diff_vs_torch": max_diff,
        "max_abs_diff_stepwise_vs_whole": step_diff,
    }


def _size(path: Path) -> int:
    return path.stat().st_size


def _stage(out_dir: Path, name: str) -> Path:
    staging = out_dir / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, final: Path) -> None:
    """Replace the old bundle only after the new one passed every check."""
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def _base_manifest(
    name: str, task: str, version: str, run: dict[str, Any], arch: dict[str, Any]
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": task,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": arch,
        "tokenizer": {"file": "tokenizer.json"},
        "sources": _versions(),
        "training": run,
    }


def _architecture(
    cfg: dict[str, Any], vocab: list[str], sizes: list[int], **extra: Any
) -> dict[str, Any]:
    return {
        "arch": "AWD_LSTM",
        "vocab_size": len(vocab),
        "emb_size": cfg["emb_sz"],
        "hidden_size": cfg["n_hid"],
        "n_layers": cfg["n_layers"],
        "layer_sizes": sizes,
        "pad_id": vocab.index("xxpad"),
        "bos_id": vocab.index("xxbos"),
        "unk_id": vocab.index("xxunk"),
        **extra,
    }


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


def run_info(run_dir: Path) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    cfg = json.loads((run_dir / "config.json").read_text())
    vocab = json.loads((run_dir / "vocab.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return cfg, vocab, {"config": cfg, "metrics": metrics, "run_dir": run_dir.name}


def export_language_model(
    run_dir: Path,
    out_dir: Path,
    name: str,
    version: str,
    data: EvalData,
    bounds: Bounds = Bounds(),
    keep_fp32: bool = False,
    parity_texts: int = 8,
) -> Path:
    from fastai.text.all import load_learner

    cfg, vocab, run = run_info(run_dir)
    learn = load_learner(run_dir / "lm.pkl", cpu=True)
    graph = LanguageModelGraph(learn.model)
    sizes = layer_sizes(learn.model[0])
    staging = _stage(out_dir, name)
    fp32, int8 = staging / "model.fp32.onnx", staging / "model.onnx"
    t0 = time.perf_counter()
    export_lm(graph, fp32)
    quant = quantize(fp32, int8, len(sizes))
    export_seconds = time.perf_counter() - t0
    write_tokenizer_json(vocab, staging / "tokenizer.json")

    parity = _lm_parity(
        learn, fp32, [ids[:64] for ids in _fastai_ids(vocab, data.lm_texts[:parity_texts])], sizes
    )
    _check(
        parity["max_abs_diff_vs_torch"] <= bounds.max_abs_diff_fp32,
        f"LM fp32 ONNX differs from torch by {parity['max_abs_diff_vs_torch']:.2e} > {bounds.max_abs_diff_fp32}",
    )
    _check(
        parity["max_abs_diff_stepwise_vs_whole"] <= bounds.max_abs_diff_fp32,
        f"LM stepwise state carry differs by {parity['max_abs_diff_stepwise_vs_whole']:.2e}",
    )

    states = [
        {"h": f"h{i}", "c": f"c{i}", "h_out": f"h{i}_out", "c_out": f"c{i}_out", "size": s}
        for i, s in enumerate(sizes)
    ]
    inputs, outputs = _io(fp32)
    manifest = _base_manifest(name, "generate", version, run, _architecture(cfg, vocab, sizes))
    manifest.update(
        {
            "states": states,
            "model": {
                "file": int8.name,
                "quantization": "dynamic-int8",
                "opset": OPSET,
                "inputs": inputs,
                "outputs": outputs,
            },
        }
    )
    manifest["tokenizer"] = {"file": "tokenizer.json"}
    manifest["files"] = {int8.name: {}, "tokenizer.json": {}, fp32.name: {}}
    write_manifest(staging, manifest)  # provisional: lets the runtime reader load both files
    m_int8 = load_bundle(staging)
    m_fp32 = load_bundle(staging, model_path=fp32)
    assert isinstance(m_int8, LanguageModel) and isinstance(m_fp32, LanguageModel)
    docs = [m_int8.tokenizer.encode(t) for t in data.lm_texts]
    ppl_fp32 = evaluate.lm_perplexity(m_fp32, docs)
    ppl_int8 = evaluate.lm_perplexity(m_int8, docs)
    ratio = ppl_int8["perplexity"] / ppl_fp32["perplexity"]
    _check(
        ratio <= bounds.max_perplexity_ratio,
        f"int8 LM perplexity {ppl_int8['perplexity']:.2f} is {100 * (ratio - 1):.2f}% above fp32 {ppl_fp32['perplexity']:.2f}",
    )
    manifest["metrics"] = {
        "parity": parity,
        "quantization": {**quant, "perplexity_ratio_int8_vs_fp32": ratio},
        "evaluation": {
            "data": "IMDB test reviews (held out from LM training)",
            "documents": len(docs),
            "fp32": ppl_fp32,
            "int8": ppl_int8,
        },
        "sizes": {"fp32_bytes": _size(fp32), "int8_bytes": _size(int8)},
        "export_seconds": round(export_seconds, 2),
        "bounds": bounds.__dict__,
    }
    manifest["reference_stats"] = evaluate.reference_stats(docs, m_int8.unk_id)
    _finish(staging, manifest, keep_fp32, int8, fp32)
    final = out_dir / name
    _publish(staging, final)
    return final


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def export_classifier_bundle(
    run_dir: Path,
    out_dir: Path,
    name: str,
    version: str,
    data: EvalData,
    bounds: Bounds = Bounds(),
    keep_fp32: bool = False,
    parity_texts: int = 16,
) -> Path:
    from fastai.text.all import load_learner

    cfg, vocab, run = run_info(run_dir)
    learn = load_learner(run_dir / "classifier.pkl", cpu=True)
    labels = [str(label) for label in learn.dls.vocab[1]]
    graph = ClassifierGraph(learn.model)
    sizes = layer_sizes(learn.model[0].module)
    staging = _stage(out_dir, name)
    fp32, int8 = staging / "model.fp32.onnx", staging / "model.onnx"
    t0 = time.perf_counter()
    export_classifier(graph, fp32)
    quant = quantize(fp32, int8, len(sizes))
    export_seconds = time.perf_counter() - t0
    write_tokenizer_json(vocab, staging / "tokenizer.json")

    parity = _classifier_parity(learn, graph, fp32, _fastai_ids(vocab, data.texts[:parity_texts]))
    for key in ("max_abs_diff_vs_torch", "max_abs_diff_padded_vs_single"):
        _check(
            parity[key] <= bounds.max_abs_diff_fp32,
            f"classifier {key} = {parity[key]:.2e} > {bounds.max_abs_diff_fp32}",
        )

    inputs, outputs = _io(fp32)
    arch = _architecture(cfg, vocab, sizes, bptt=graph.bptt, max_len=graph.max_len)
    manifest = _base_manifest(name, "classify", version, run, arch)
    manifest.update(
        {
            "labels": labels,
            "model": {
                "file": int8.name,
                "quantization": "dynamic-int8",
                "opset": OPSET,
                "inputs": inputs,
                "outputs": outputs,
            },
        }
    )
    manifest["files"] = {int8.name: {}, "tokenizer.json": {}, fp32.name: {}}
    write_manifest(staging, manifest)
    m_int8 = load_bundle(staging)
    m_fp32 = load_bundle(staging, model_path=fp32)
    assert isinstance(m_int8, ClassifierModel) and isinstance(m_fp32, ClassifierModel)
    t1 = time.perf_counter()
    docs = [m_int8.tokenizer.encode(t) for t in data.texts]
    tokenize_seconds = time.perf_counter() - t1
    # fp32 and int8 side by side: each session runs on one thread and releases the GIL
    with ThreadPoolExecutor(max_workers=2) as pool:
        timed = [pool.submit(_timed, evaluate.classify_ids, m, docs) for m in (m_fp32, m_int8)]
        (p_fp32, s_fp32), (p_int8, s_int8) = (f.result() for f in timed)
    acc_fp32 = evaluate.accuracy(p_fp32, data.labels, labels)
    acc_int8 = evaluate.accuracy(p_int8, data.labels, labels)
    agreement = float((p_fp32.argmax(1) == p_int8.argmax(1)).mean())
    _check(
        agreement >= bounds.min_argmax_agreement,
        f"int8 vs fp32 argmax agreement {agreement:.4f} < {bounds.min_argmax_agreement}",
    )
    _check(
        acc_fp32 - acc_int8 <= bounds.max_accuracy_drop,
        f"int8 accuracy {acc_int8:.4f} drops {100 * (acc_fp32 - acc_int8):.2f} pt below fp32 {acc_fp32:.4f}",
    )
    manifest["metrics"] = {
        "parity": parity,
        "quantization": {
            **quant,
            "argmax_agreement_int8_vs_fp32": agreement,
            "max_abs_diff_probabilities_int8_vs_fp32": float(np.abs(p_fp32 - p_int8).max()),
        },
        "evaluation": {
            "data": "IMDB test split (never used for training)",
            "documents": len(docs),
            "accuracy_fp32": acc_fp32,
            "accuracy_int8": acc_int8,
            "accuracy_drop_pt": round(100 * (acc_fp32 - acc_int8), 3),
            "seconds": {
                "tokenize": round(tokenize_seconds, 1),
                "fp32": round(s_fp32, 1),
                "int8": round(s_int8, 1),
                "fp32_and_int8_concurrently": True,
            },
        },
        "sizes": {"fp32_bytes": _size(fp32), "int8_bytes": _size(int8)},
        "export_seconds": round(export_seconds, 2),
        "bounds": bounds.__dict__,
    }
    manifest["reference_stats"] = evaluate.reference_stats(docs, m_int8.unk_id, p_int8, labels)
    _finish(staging, manifest, keep_fp32, int8, fp32)
    final = out_dir / name
    _publish(staging, final)
    return final
