"""Distillation: a smaller AWD-LSTM classifier trained on a teacher bundle's probabilities.

Why: a served model pays for its size on every review; a student half as wide can keep most of
the teacher's accuracy (issue 12, "a fast student"). The teacher is a classifier bundle (what is
served, int8, possibly an ensemble); its probabilities on the train reviews and on unlabelled
ones (`unsup_docs`) are the student's targets, fitted by soft cross-entropy (KL divergence to
the teacher plus the teacher's entropy, a constant). The student uses the teacher's vocabulary
and writes `student.pkl`, a plain fastai classifier learner for `python -m export`.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.text.all import (
    CategoryBlock,
    ColReader,
    DataBlock,
    RandomSplitter,
    RegressionBlock,
    TextBlock,
    set_seed,
)

from bundle import ClassifierModel, load_bundle
from export.progress import progress

from .config import TrainConfig
from .data import ImdbData
from .schedule import fit_one_cycle
from .tokens import tokenize_cached
from .ulmfit import awd_classifier_learner, text_tokenizer

TEACHER_BATCH = 32
STUDENT_FILE, METRICS_FILE = "student.pkl", "distill.json"


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's probabilities (KL to them, up to a constant)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def agreement(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How often the student picks the teacher's label."""
    return (logits.argmax(dim=-1) == target.argmax(dim=-1)).float().mean()


def teacher_probabilities(teacher: ClassifierModel, texts: list[str]) -> np.ndarray:
    batches = range(0, len(texts), TEACHER_BATCH)
    return np.concatenate(
        [
            teacher.predict_texts(texts[i : i + TEACHER_BATCH])
            for i in progress(batches, "teacher probabilities", unit="batch")
        ]
    )


def student_config(cfg: TrainConfig, emb_sz: int, n_hid: int, n_layers: int) -> TrainConfig:
    return replace(cfg, name=f"{cfg.name}-student", emb_sz=emb_sz, n_hid=n_hid, n_layers=n_layers)


def _learner(frame: pd.DataFrame, y_block: Any, y_cols: Any, vocab: list[str], cfg: TrainConfig,
             out: Path, **kwargs: Any) -> Any:  # fmt: skip
    block = DataBlock(
        blocks=(TextBlock(text_tokenizer(), vocab=vocab, seq_len=cfg.bptt), y_block),
        get_x=ColReader("text"),
        get_y=ColReader(y_cols),
        splitter=RandomSplitter(cfg.valid_pct, seed=cfg.seed),
    )
    dls = block.dataloaders(frame, bs=cfg.clf_bs, seq_len=cfg.bptt)
    return awd_classifier_learner(dls, cfg, out, **kwargs)


def distill(
    teacher_dir: Path,
    data: ImdbData,
    cfg: TrainConfig,
    out: Path,
    epochs: int,
    unsup_docs: int | None = None,
) -> dict[str, Any]:
    """Teacher probabilities -> student fit on them -> `student.pkl` (labelled by the teacher's
    labels) and `distill.json` (sizes, seconds, validation agreement with the teacher)."""
    set_seed(cfg.seed)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_bundle(teacher_dir)
    if not isinstance(teacher, ClassifierModel) or teacher.multi_label:
        raise ValueError(f"{teacher_dir}: the teacher must be a single-label classifier bundle")
    unsup = data.unsup["text"] if unsup_docs is None else data.unsup["text"].iloc[:unsup_docs]
    texts = [str(t) for t in pd.concat([data.train["text"], unsup], ignore_index=True)]
    t0 = time.perf_counter()
    probs = teacher_probabilities(teacher, texts)
    t_teacher = time.perf_counter() - t0
    tokens = tokenize_cached(pd.Series(texts), out / "cache", "distill", cfg.n_workers)
    cols = [f"p{i}" for i in range(len(teacher.labels))]
    frame = pd.DataFrame({"text": tokens, **{c: probs[:, i] for i, c in enumerate(cols)}})
    frame["label"] = [teacher.labels[i] for i in probs.argmax(axis=1)]
    vocab = list(teacher.tokenizer.vocab)
    student = _learner(
        frame, RegressionBlock(n_out=len(cols)), cols, vocab, cfg, out,
        loss_func=soft_cross_entropy, metrics=agreement,
    )  # fmt: skip
    t1 = time.perf_counter()
    fit_one_cycle(student, epochs, cfg.clf_lr, label="student")
    t_fit = time.perf_counter() - t1
    valid_loss, valid_agreement = (float(v) for v in student.validate())
    # the same weights in a learner whose outputs are the teacher's labels, for export
    labelled = _learner(frame, CategoryBlock(vocab=teacher.labels), "label", vocab, cfg, out)
    labelled.model.load_state_dict(student.model.state_dict())
    labelled.export(STUDENT_FILE)
    metrics = {
        "teacher": teacher.manifest.model_id,
        "documents": {"train": len(data.train), "unsup": len(unsup)},
        "student": {"emb_sz": cfg.emb_sz, "n_hid": cfg.n_hid, "n_layers": cfg.n_layers},
        "epochs": epochs,
        "teacher_seconds": round(t_teacher, 1),
        "fit_seconds": round(t_fit, 1),
        "valid_soft_cross_entropy": valid_loss,
        "valid_agreement_with_teacher": valid_agreement,
        "config": cfg.to_dict(),
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
