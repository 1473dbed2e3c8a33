"""Distillation: a smaller AWD-LSTM classifier trained on a teacher's soft labels.

Why: a served model pays for its size on every review; a narrower student can keep most of the
teacher's accuracy at a fraction of the session time (issue 12, "a fast student"). The targets
are the teacher bundle's probabilities on the train and unsup reviews of a pre-tokenized corpus
(training/soft_labels.py, computed once on a CPU), fitted by soft cross-entropy (KL divergence
to the teacher plus the teacher's entropy, a constant), from scratch, on the corpus's ids: no
tokenizer, no spaCy, so it runs on a lent GPU machine like `--weights-only` training and writes
the same kind of results (config.json, vocab.json, metrics.json, fp16 weights/student-*.pt).
`python -m training rebuild` then makes `student.pkl` here, a plain fastai classifier learner.

Held out: the train reviews of the classifier's own validation split (the same seeded split the
teacher was validated on, so the teacher never trained on them either) are never taught; the
student is validated there against the teacher's answers and the true labels.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fastai.text.all import (
    DataLoaders,
    RandomSplitter,
    SortedDL,
    TensorText,
    pad_input_chunk,
    set_seed,
)

from .budget import TimeBudget, fit_budgeted
from .config import TrainConfig
from .corpus import TokenizedCorpus, clf_rows
from .run_files import CONFIG_FILE, METRICS_FILE, STUDENT_STEM, VOCAB_FILE, WEIGHTS_DIR
from .schedule import fit_one_cycle, validate
from .soft_labels import SoftLabels
from .ulmfit import (
    awd_classifier_learner,
    clf_learner,
    hardware,
    on_gpu,
    update_metrics,
    write_json,
)
from .weights import load_fp16_chunks, save_fp16_chunks

STUDENT_FILE = "student.pkl"
# The student's epochs are an upper bound: with a time budget (--finish-by) the one-cycle schedule
# takes as many as fit, up to this; without one, all of them.
MAX_EPOCHS = 12
# Default student size, relative to the config's (the teacher's) AWD-LSTM: half the embedding and
# half the LSTM width, the same depth. Issue 12 asks for >= 3x less session time per review on one
# core, within 0.5 pt of the teacher's accuracy: measured (int8 onnxruntime, one thread, the gpu
# vocab), 128 / 384 / 3 runs an IMDB review of ~320 tokens 4.0x faster than the teacher's
# 256 / 768 / 3 (3.8x at 40 tokens), and 128 / 256 / 3 7.1x (6.4x). The widest student that
# clears 3x with room keeps the most accuracy: half (docs/training.md, "Distillation").
STUDENT_EMB_SHARE, STUDENT_HID_SHARE = 1 / 2, 1 / 2


def default_student_sizes(cfg: TrainConfig) -> tuple[int, int, int]:
    """(emb_sz, n_hid, n_layers) of the default student of `cfg`, widths multiples of 8."""

    def width(size: float) -> int:
        return max(8, 8 * round(size / 8))

    return width(cfg.emb_sz * STUDENT_EMB_SHARE), width(cfg.n_hid * STUDENT_HID_SHARE), cfg.n_layers


def student_config(cfg: TrainConfig, emb_sz: int, n_hid: int, n_layers: int) -> TrainConfig:
    return replace(cfg, name=f"{cfg.name}-student", emb_sz=emb_sz, n_hid=n_hid, n_layers=n_layers)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's probabilities (KL to them, up to a constant)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def agreement(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How often the student picks the teacher's label."""
    return (logits.argmax(dim=-1) == target.argmax(dim=-1)).float().mean()


def held_out_rows(corpus: TokenizedCorpus, cfg: TrainConfig) -> np.ndarray:
    """Train rows of the classifier's validation split: the split `clf_learner` (and so the
    teacher's run and `rebuild`) draws over `clf_rows`, with the config's seed."""
    rows = clf_rows(corpus.n_train, cfg)
    _train, valid = RandomSplitter(cfg.valid_pct, seed=cfg.seed)(range(len(rows)))
    return np.sort(rows[np.asarray(valid, dtype=np.int64)])


def taught_rows(corpus: TokenizedCorpus, cfg: TrainConfig, unsup_docs: int | None) -> np.ndarray:
    """Documents the student learns from: the other train rows, then unsup ones (all by default)."""
    n_docs = len(corpus.offsets) - 1
    train = np.setdiff1d(np.arange(corpus.n_train), held_out_rows(corpus, cfg))
    unsup = np.arange(corpus.n_train, n_docs)
    return np.concatenate([train, unsup if unsup_docs is None else unsup[:unsup_docs]])


def _student_learner(
    corpus: TokenizedCorpus, soft: SoftLabels, cfg: TrainConfig, out: Path, taught: np.ndarray
) -> Any:
    """A fastai AWD-LSTM classifier over id tensors and soft targets, batched as fastai's text
    classifiers are (length-sorted, padded in chunks of bptt)."""
    ids = np.split(corpus.ids.astype(np.int64), corpus.offsets[1:-1])
    targets = torch.from_numpy(soft.probabilities.astype(np.float32))

    def items(rows: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        docs = (torch.from_numpy(ids[r]) for r in rows)
        return [
            (TensorText(d.flip(0) if cfg.backwards else d), targets[r])
            for d, r in zip(docs, rows, strict=True)
        ]

    pad = partial(pad_input_chunk, pad_idx=corpus.vocab.index("xxpad"), seq_len=cfg.bptt)

    def loader(rows: np.ndarray, shuffle: bool) -> SortedDL:
        lengths = (corpus.offsets[rows + 1] - corpus.offsets[rows]).tolist()
        return SortedDL(
            items(rows), res=lengths, bs=cfg.clf_bs, shuffle=shuffle, drop_last=shuffle,
            before_batch=pad,
        )  # fmt: skip

    dls = DataLoaders(
        loader(taught, True),
        loader(held_out_rows(corpus, cfg), False),
        device=torch.device("cuda") if torch.cuda.is_available() else None,
    )
    dls.vocab = corpus.vocab
    return awd_classifier_learner(
        dls, cfg, out, n_out=len(soft.labels), loss_func=soft_cross_entropy, metrics=agreement
    )


def distill(
    corpus: TokenizedCorpus,
    soft: SoftLabels,
    cfg: TrainConfig,
    out: Path,
    max_epochs: int = MAX_EPOCHS,
    budget: TimeBudget | None = None,
    unsup_docs: int | None = None,
) -> dict[str, Any]:
    """Fit the student (`cfg` holds its sizes) to the soft labels; write config.json, vocab.json,
    fp16 weights/student-*.pt and metrics.json["student"]. The caller has checked that `soft`
    belongs to `corpus` (SoftLabels.check_corpus)."""
    set_seed(cfg.seed)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, cfg.to_dict())
    write_json(out / VOCAB_FILE, corpus.vocab)
    taught = taught_rows(corpus, cfg, unsup_docs)
    learn = on_gpu(_student_learner(corpus, soft, cfg, out, taught))
    t0 = time.perf_counter()
    if budget is None:
        schedule: dict[str, Any] = {"epochs": max_epochs, "epoch_fraction": 1.0}
        fit_one_cycle(learn, max_epochs, cfg.clf_lr, label="student")
    else:
        schedule = fit_budgeted(learn, max_epochs, cfg.clf_lr, budget, label="student")
    fit_s = time.perf_counter() - t0
    valid_loss, _ = validate(learn, "student validation")
    with learn.no_bar():
        logits, _targets = learn.get_preds(dl=learn.dls.valid)  # in held_out_rows order
    held_out = held_out_rows(corpus, cfg)
    student = logits.float().argmax(dim=1).cpu().numpy()
    teacher = soft.probabilities[held_out].argmax(axis=1)
    truth = np.array([soft.labels.index(corpus.labels[r]) for r in held_out])
    paths = save_fp16_chunks(learn.model.state_dict(), out / WEIGHTS_DIR, STUDENT_STEM)
    n_unsup = len(taught) - int(np.sum(taught < corpus.n_train))
    metrics = {
        "labels": soft.labels,
        "teacher": soft.meta["teacher"],
        "soft_labels_corpus_sha256": soft.meta["corpus"]["sha256"],
        "sizes": {"emb_sz": cfg.emb_sz, "n_hid": cfg.n_hid, "n_layers": cfg.n_layers},
        "documents": {"train": len(taught) - n_unsup, "unsup": n_unsup, "held_out": len(held_out)},
        "schedule": schedule,
        "lr": cfg.clf_lr,
        "bs": cfg.clf_bs,
        "fit_seconds": round(fit_s, 1),
        "held_out": {  # train reviews neither the teacher nor the student was trained on
            "soft_cross_entropy": valid_loss,
            "agreement_with_teacher": float(np.mean(student == teacher)),
            "student_accuracy": float(np.mean(student == truth)),
            "teacher_accuracy": float(np.mean(teacher == truth)),
        },
        "hardware": hardware(),
        "weight_files": [str(p.relative_to(out)) for p in paths],
    }
    update_metrics(out, STUDENT_STEM, metrics)
    return metrics


def rebuild_student(corpus: TokenizedCorpus, out: Path) -> dict[str, Any]:
    """A distill run's fp16 weights -> `student.pkl`: a fastai classifier learner over the
    corpus's train reviews with fastai's real tokenizer (so `predict(text)` and `python -m
    export` work), labelled with the teacher's labels. Its accuracy on the held-out reviews is
    measured again, so a broken transfer shows at once. The caller has checked the files."""
    out = out.resolve()
    cfg = TrainConfig(**json.loads((out / CONFIG_FILE).read_text()))
    vocab = json.loads((out / VOCAB_FILE).read_text())
    trained = json.loads((out / METRICS_FILE).read_text())[STUDENT_STEM]
    if vocab != corpus.vocab:
        raise ValueError(f"{out}/{VOCAB_FILE} differs from the corpus vocab")
    t0 = time.perf_counter()
    print("rebuild: student learner over the corpus's train reviews", file=sys.stderr, flush=True)
    tokens, labels = corpus.clf_tokens(cfg)
    learn = clf_learner(tokens, labels, vocab, cfg, out)
    if list(learn.dls.vocab[1]) != trained["labels"]:
        raise ValueError(
            f"the corpus's labels {list(learn.dls.vocab[1])} are not the student's "
            f"{trained['labels']} (the teacher's order)"
        )
    learn.model.load_state_dict(load_fp16_chunks(out / WEIGHTS_DIR, STUDENT_STEM))
    accuracy = validate(learn, "rebuild: student validation")[1]
    learn.export(STUDENT_FILE)
    rebuilt = {
        "student": STUDENT_FILE,
        "held_out_accuracy_fp16_weights": accuracy,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    update_metrics(out, "rebuilt", rebuilt)
    return rebuilt
