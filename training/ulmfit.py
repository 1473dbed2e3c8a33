"""The ULMFiT recipe with fastai: tokenize once (cached), train an AWD-LSTM language model on
train + unsup text, then fine-tune a classifier from its encoder with gradual unfreezing.

Everything a later stage needs is written to the run directory:
  config.json, vocab.json, metrics.json, lm.pkl / classifier.pkl (fastai learners, `learn.export`),
  models/encoder.pth (the LM encoder the classifier starts from), cache/*.pkl (tokenized text).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.text.all import (
    AWD_LSTM,
    BaseTokenizer,
    CategoryBlock,
    ColReader,
    DataBlock,
    DataLoaders,
    LMDataLoader,
    Perplexity,
    RandomSplitter,
    SpacyTokenizer,
    TextBlock,
    Tokenizer,
    accuracy,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    defaults,
    language_model_learner,
    set_seed,
    text_classifier_learner,
)

from .budget import TimeBudget, fit_budgeted
from .config import TrainConfig
from .corpus import TokenizedCorpus, build_vocab, clf_rows, lm_order
from .data import ImdbData
from .run_files import CONFIG_FILE, VOCAB_FILE, WEIGHTS_DIR
from .schedule import fit_one_cycle, validate
from .tokens import tokenize_cached
from .weights import load_fp16_chunks, save_fp16_chunks

Source = ImdbData | TokenizedCorpus

DISCRIMINATIVE_FACTOR = 2.6**4  # lower layer groups get lr / 2.6^4 (ULMFiT)


def hardware() -> dict[str, Any]:
    """What the run used: recorded with the metrics so timings can be compared honestly."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _lm_corpus(data: ImdbData, cfg: TrainConfig) -> pd.Series:
    """LM text: train + unsup (never test), shuffled with the config's seed, capped at lm_docs."""
    texts = pd.concat([data.train["text"], data.unsup["text"]], ignore_index=True)
    return texts.iloc[lm_order(len(texts), cfg)].reset_index(drop=True)


def text_tokenizer(weights_only: bool = False) -> Tokenizer:
    """fastai's default tokenizer as the learners' text transform. Training items are already
    tokenized (lists pass through it unchanged), but an exported learner's `predict(text)` must
    tokenize raw strings exactly as the training data was. A weights-only run (a GPU machine
    without spaCy, fed a pre-tokenized corpus) exports no learner, so a placeholder will do."""
    try:
        return Tokenizer(SpacyTokenizer(), rules=defaults.text_proc_rules)
    except ImportError:
        if not weights_only:
            raise
        return Tokenizer(BaseTokenizer(), rules=defaults.text_proc_rules)


def _lm_tokens(data: Source, cfg: TrainConfig, out: Path) -> tuple[list[list[str]], list[str]]:
    """LM documents as token lists, and the vocab built from them."""
    if isinstance(data, TokenizedCorpus):
        data.check_matches(cfg)
        return data.lm_tokens(), data.vocab
    tokens = tokenize_cached(_lm_corpus(data, cfg), out / "cache", "lm", cfg.n_workers)
    return tokens, build_vocab(tokens, cfg)


def _clf_tokens(data: Source, cfg: TrainConfig, out: Path) -> tuple[list[list[str]], list[str]]:
    """Classifier documents (train, or the config's seeded sample of it) and their labels."""
    if isinstance(data, TokenizedCorpus):
        return data.clf_tokens(cfg)
    train = data.train.iloc[clf_rows(len(data.train), cfg)]
    tokens = tokenize_cached(
        train["text"].reset_index(drop=True), out / "cache", "clf", cfg.n_workers
    )
    return tokens, train["label"].astype(str).tolist()


def on_gpu(learn: Any) -> Any:
    """Mixed precision where a GPU trains: the LSTMs run in fp16 with fp32 master weights."""
    return learn.to_fp16() if torch.cuda.is_available() else learn


def _loss_trend(learn: Any, window: int = 10) -> dict[str, float]:
    """Mean training loss over the first and last batches: the training-system test reads it."""
    losses = [float(v) for v in learn.recorder.losses]
    w = max(1, min(window, len(losses) // 4))
    return {
        "train_loss_start": sum(losses[:w]) / w,
        "train_loss_end": sum(losses[-w:]) / w,
        "steps": len(losses),
    }


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")


def update_metrics(out: Path, key: str, value: dict[str, Any]) -> None:
    path = out / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[key] = value
    write_json(path, metrics)


def _arch_config(cfg: TrainConfig, base: dict[str, Any]) -> dict[str, Any]:
    return {**base, "emb_sz": cfg.emb_sz, "n_hid": cfg.n_hid, "n_layers": cfg.n_layers}


def awd_lm_learner(dls: Any, cfg: TrainConfig, out: Path) -> Any:
    """The AWD-LSTM language model of `cfg` over `dls` (text or pre-numericalized path alike)."""
    return language_model_learner(
        dls,
        AWD_LSTM,
        config=_arch_config(cfg, awd_lstm_lm_config),
        drop_mult=cfg.lm_drop_mult,
        pretrained=cfg.pretrained,
        metrics=[accuracy, Perplexity()],
        path=out,
    )


def awd_classifier_learner(dls: Any, cfg: TrainConfig, out: Path, **kwargs: Any) -> Any:
    """The AWD-LSTM classifier of `cfg` over `dls` (ULMFiT's and the distilled student's)."""
    return text_classifier_learner(
        dls,
        AWD_LSTM,
        config=_arch_config(cfg, awd_lstm_clas_config),
        drop_mult=cfg.clf_drop_mult,
        pretrained=False,
        seq_len=cfg.bptt,
        max_len=cfg.max_len,
        path=out,
        **kwargs,
    )


def _lm_learner(
    tokens: list[list[str]],
    vocab: list[str],
    cfg: TrainConfig,
    out: Path,
    weights_only: bool = False,
) -> Any:
    block = DataBlock(
        blocks=TextBlock(
            text_tokenizer(weights_only),
            vocab=vocab,
            is_lm=True,
            seq_len=cfg.bptt,
            backwards=cfg.backwards,
        ),
        get_x=ColReader("text"),
        splitter=RandomSplitter(cfg.valid_pct, seed=cfg.seed),
    )
    dls = block.dataloaders(pd.DataFrame({"text": tokens}), bs=cfg.lm_bs, seq_len=cfg.bptt)
    return awd_lm_learner(dls, cfg, out)


def _lm_learner_from_ids(corpus: TokenizedCorpus, cfg: TrainConfig, out: Path) -> Any:
    """LM learner over pre-numericalized documents. fastai's text path numericalizes every document
    each time a batch touches it (its cache holds two), which made the GPU wait on the CPU (~250 ms
    a batch at bs 256); slicing id tensors keeps it fed. For weights-only runs: its DataLoaders
    carry no tokenizer, so it is never exported as a learner."""
    docs = [
        torch.from_numpy(corpus.ids[corpus.offsets[i] : corpus.offsets[i + 1]].astype(np.int64))
        for i in corpus.lm_order
    ]
    if cfg.backwards:  # as fastai's reverse_text: each document reversed, then concatenated
        docs = [d.flip(0) for d in docs]
    train_idx, valid_idx = RandomSplitter(cfg.valid_pct, seed=cfg.seed)(docs)

    def loader(idx: list[int], shuffle: bool) -> LMDataLoader:
        return LMDataLoader(
            [docs[i] for i in idx],
            lens=[len(docs[i]) for i in idx],
            bs=cfg.lm_bs,
            seq_len=cfg.bptt,
            shuffle=shuffle,
            drop_last=shuffle,
        )

    dls = DataLoaders(
        loader(train_idx, True),
        loader(valid_idx, False),
        device=torch.device("cuda") if torch.cuda.is_available() else None,
    )
    dls.vocab = corpus.vocab
    return awd_lm_learner(dls, cfg, out)


def clf_learner(
    tokens: list[list[str]],
    labels: list[str],
    vocab: list[str],
    cfg: TrainConfig,
    out: Path,
    weights_only: bool = False,
) -> Any:
    block = DataBlock(
        blocks=(
            TextBlock(
                text_tokenizer(weights_only),
                vocab=vocab,
                seq_len=cfg.bptt,
                backwards=cfg.backwards,
            ),
            CategoryBlock,
        ),
        get_x=ColReader("text"),
        get_y=ColReader("label"),
        splitter=RandomSplitter(cfg.valid_pct, seed=cfg.seed),
    )
    dls = block.dataloaders(
        pd.DataFrame({"text": tokens, "label": labels}), bs=cfg.clf_bs, seq_len=cfg.bptt
    )
    return awd_classifier_learner(dls, cfg, out, metrics=accuracy)


def train_lm(
    data: Source,
    cfg: TrainConfig,
    out: Path,
    budget: TimeBudget | None = None,
    weights_only: bool = False,
    init_weights: Path | None = None,
) -> dict[str, Any]:
    """Train the language model; writes vocab.json, lm.pkl, models/encoder.pth, metrics['lm'].
    With a budget the epochs fit its seconds; weights_only writes fp16 weights instead of lm.pkl."""
    set_seed(cfg.seed)  # Python, numpy and torch: fastai shuffles with Python's random
    out = out.resolve()  # fastai joins relative names onto learn.path
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    t0 = time.perf_counter()
    tokens, vocab = _lm_tokens(data, cfg, out)
    t_tok = time.perf_counter() - t0
    write_json(out / VOCAB_FILE, vocab)

    if weights_only and isinstance(
        data, TokenizedCorpus
    ):  # ids already: skip per-batch numericalization
        learn = _lm_learner_from_ids(data, cfg, out)
    else:
        learn = _lm_learner(tokens, vocab, cfg, out, weights_only)
    if (
        init_weights is not None
    ):  # continue a language model trained before (e.g. on another machine)
        learn.model.load_state_dict(load_fp16_chunks(init_weights, "lm"))
    learn = on_gpu(learn)
    t1 = time.perf_counter()
    if budget is None:
        schedule = {"epochs": cfg.lm_epochs, "epoch_fraction": 1.0}
        fit_one_cycle(learn, cfg.lm_epochs, cfg.lm_lr, label="LM")
    else:
        schedule = fit_budgeted(learn, cfg.lm_epochs, cfg.lm_lr, budget, label="LM")
    t_train = time.perf_counter() - t1
    trend = _loss_trend(learn)  # before validate(), which resets the recorder
    valid_loss, valid_acc, valid_ppl = validate(learn, "LM validation")
    learn.save_encoder("encoder")
    weight_files = []
    if weights_only:
        paths = save_fp16_chunks(learn.model.state_dict(), out / WEIGHTS_DIR, "lm")
        weight_files = [str(p.relative_to(out)) for p in paths]
    else:
        learn.export("lm.pkl")  # relative to learn.path (= out)
    n_tokens = sum(len(d) for d in tokens)
    epochs_run = schedule["epochs"] * schedule["epoch_fraction"]
    metrics = {
        "docs": len(tokens),
        "tokens": n_tokens,
        "vocab_size": len(vocab),
        "valid_loss": valid_loss,
        "valid_accuracy": valid_acc,
        "valid_perplexity": valid_ppl,
        **trend,
        "schedule": schedule,
        "lr": cfg.lm_lr,
        "bs": cfg.lm_bs,
        "drop_mult": cfg.lm_drop_mult,
        "tokenize_seconds": round(t_tok, 1),
        "train_seconds": round(t_train, 1),
        "train_tokens_per_second": round(n_tokens * (1 - cfg.valid_pct) * epochs_run / t_train, 1),
        "hardware": hardware(),
        **({"weight_files": weight_files} if weights_only else {}),
    }
    update_metrics(out, "lm", metrics)
    return metrics


def _clf_stages(cfg: TrainConfig) -> list[tuple[int | None, int, float | slice]]:
    """(freeze_to, epochs, lr) per ULMFiT stage; freeze_to None means unfreeze everything."""
    lr = cfg.clf_lr
    group_lrs = [lr, lr / 2, lr / 4, lr / 10]
    stages: list[tuple[int | None, int, float | slice]] = []
    for freeze_to, epochs, stage_lr in zip(
        (-1, -2, -3, None), cfg.clf_epochs, group_lrs, strict=False
    ):
        if epochs:
            stages.append(
                (
                    freeze_to,
                    epochs,
                    stage_lr
                    if freeze_to == -1
                    else slice(stage_lr / DISCRIMINATIVE_FACTOR, stage_lr),
                )
            )
    return stages


def _export_classifier(learn: Any, out: Path, weights_only: bool) -> list[str]:
    """classifier.pkl, or fp16 weight chunks: returns the chunks' paths within `out`."""
    if not weights_only:
        learn.export("classifier.pkl")
        return []
    paths = save_fp16_chunks(learn.model.state_dict(), out / WEIGHTS_DIR, "classifier")
    return [str(p.relative_to(out)) for p in paths]


def train_classifier(
    data: Source,
    cfg: TrainConfig,
    out: Path,
    resume_after: int | None = None,
    budget: TimeBudget | None = None,
    weights_only: bool = False,
) -> dict[str, Any]:
    """Fine-tune the classifier from the LM encoder; writes classifier.pkl and metrics['classifier'].
    With a budget the last stage fits the seconds left; weights_only writes fp16 weights instead."""
    set_seed(cfg.seed)  # Python, numpy and torch: fastai shuffles with Python's random
    out = out.resolve()
    vocab = json.loads((out / "vocab.json").read_text())
    lm_cfg = json.loads((out / "config.json").read_text())
    if any(
        lm_cfg[k] != getattr(cfg, k) for k in ("emb_sz", "n_hid", "n_layers", "max_vocab", "bptt")
    ):
        raise ValueError(
            f"classifier config {cfg.name} does not match the LM's architecture in {out}/config.json"
        )
    if lm_cfg.get("backwards", False) != cfg.backwards:  # the encoder reads one token order
        raise ValueError(
            f"the LM in {out} was trained {'backwards' if lm_cfg.get('backwards') else 'forwards'}"
            f"; train the classifier the same way ({'with' if lm_cfg.get('backwards') else 'without'}"
            " --backwards)"
        )
    write_json(
        out / "config.json", {**cfg.to_dict(), "lm_docs": lm_cfg["lm_docs"]}
    )  # what really ran
    t0 = time.perf_counter()
    tokens, labels = _clf_tokens(data, cfg, out)
    t_tok = time.perf_counter() - t0
    learn = clf_learner(tokens, labels, vocab, cfg, out, weights_only)
    dls = learn.dls
    if cfg.clf_init == "lm":
        learn.load_encoder("encoder")
    learn = on_gpu(learn)
    t1 = time.perf_counter()
    history = []
    stages = _clf_stages(cfg) if cfg.clf_init == "lm" else [(None, sum(cfg.clf_epochs), cfg.clf_lr)]
    if resume_after is not None:  # continue an interrupted run from its stage checkpoint
        learn.load(f"classifier-stage{resume_after}")
        previous = json.loads((out / "metrics.json").read_text()).get("classifier_progress", {})
        history = [h for h in previous.get("stages", []) if h["stage"] <= resume_after]
    for i, (freeze_to, epochs, lr) in enumerate(stages):
        if resume_after is not None and i <= resume_after:
            continue
        last = i == len(stages) - 1
        fraction = cfg.clf_last_stage_fraction if last else 1.0
        if freeze_to is None:
            learn.unfreeze()
        else:
            learn.freeze_to(freeze_to)
        if budget is not None and last:  # the last stage gets what the budget has left
            schedule = fit_budgeted(learn, epochs, lr, budget, label=f"classifier stage {i}")
            epochs, fraction = schedule["epochs"], schedule["epoch_fraction"]
        else:
            fit_one_cycle(learn, epochs, lr, fraction, label=f"classifier stage {i}")
        _loss, acc = validate(learn, f"classifier stage {i} validation")
        history.append(
            {
                "stage": i,
                "freeze_to": freeze_to,
                "epochs": epochs,
                "epoch_fraction": fraction,
                "valid_accuracy": acc,
                "seconds": round(time.perf_counter() - t1, 1),
            }
        )
        learn.save(f"classifier-stage{i}")  # checkpoint: a long CPU run can be resumed by hand
        _export_classifier(
            learn, out, weights_only
        )  # after every stage: an interrupted run still exports
        update_metrics(out, "classifier_progress", {"stages": history})
    t_train = time.perf_counter() - t1
    valid_loss, valid_acc = validate(learn, "classifier validation")
    weight_files = _export_classifier(learn, out, weights_only)
    metrics = {
        "docs": len(tokens),
        "labels": list(dls.vocab[1]),
        "valid_loss": valid_loss,
        "valid_accuracy": valid_acc,
        "stages": history,
        "tokenize_seconds": round(t_tok, 1),
        "train_seconds": round(t_train, 1),
        "hardware": hardware(),
        **({"weight_files": weight_files} if weights_only else {}),
    }
    update_metrics(out, "classifier", metrics)
    return metrics


def rebuild_learners(
    data: TokenizedCorpus, out: Path, check_accuracy: bool = True
) -> dict[str, Any]:
    """Turn a weights-only run (fp16 chunks in out/weights, trained where spaCy was absent) into
    the usual learners: lm.pkl and classifier.pkl with fastai's real tokenizer, models/encoder.pth.
    With `check_accuracy`, the classifier is re-validated here so a broken transfer shows at once.
    The caller checks first that every file is there (run_files.missing_for_rebuild)."""
    out = out.resolve()
    cfg = TrainConfig(**json.loads((out / CONFIG_FILE).read_text()))
    vocab = json.loads((out / VOCAB_FILE).read_text())
    if vocab != data.vocab:
        raise ValueError(f"{out}/{VOCAB_FILE} differs from the corpus vocab")
    steps = ["LM learner from fp16 weights", "classifier learner over the corpus", "export"]
    if check_accuracy:
        steps.insert(2, "classifier validation")
    t0 = time.perf_counter()

    def step(name: str) -> None:
        n = steps.index(name) + 1
        elapsed = time.perf_counter() - t0
        print(f"rebuild {n}/{len(steps)}: {name} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    rebuilt: dict[str, Any] = {}
    step(steps[0])
    lm_docs = data.doc_tokens(data.lm_order[:64])  # the learner needs a DataLoaders; any docs do
    lm = _lm_learner(lm_docs, vocab, replace(cfg, lm_bs=4), out)
    lm.model.load_state_dict(load_fp16_chunks(out / WEIGHTS_DIR, "lm"))
    step("classifier learner over the corpus")
    tokens, labels = data.clf_tokens(cfg)
    clf = clf_learner(tokens, labels, vocab, cfg, out)
    clf.model.load_state_dict(load_fp16_chunks(out / WEIGHTS_DIR, "classifier"))
    if check_accuracy:
        step("classifier validation")
        accuracy = validate(clf, "rebuild: classifier validation")[1]
        rebuilt["classifier_valid_accuracy_fp16_weights"] = accuracy
    step("export")
    lm.save_encoder("encoder")
    lm.export("lm.pkl")
    clf.export("classifier.pkl")
    rebuilt.update(lm="lm.pkl", classifier="classifier.pkl")
    rebuilt["seconds"] = round(time.perf_counter() - t0, 1)
    update_metrics(out, "rebuilt", rebuilt)
    return rebuilt
