"""Learners made the way a user's notebook makes them: plain fastai API, never training/.

Tiny sizes and a synthetic corpus whose labels follow signal words, so that a few CPU epochs
give confident models. `build_all(out)` writes one `learn.export()` file per kind and returns
their paths; tests cache them by the hash of this file (see test_export_learner.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd
import torch

SEED = 0
# odd label names on purpose: spaces, unicode, punctuation, a slash
THREE_CLASSES = {
    "très bien ✓": ["wonderful", "brilliant", "superb"],
    "so-so, ok?": ["average", "okay", "mediocre"],
    "bad / awful": ["terrible", "dreadful", "boring"],
}
TAGS = {"action": ["explosion", "chase"], "romance": ["kiss", "wedding"], "comédie": ["joke"]}
FILLER = [
    "the",
    "film",
    "movie",
    "story",
    "plot",
    "actor",
    "scene",
    "music",
    "camera",
    "script",
    "director",
    "night",
    "city",
    "house",
    "was",
    "is",
    "and",
    "with",
    "of",
    "a",
    "it",
    "this",
    "that",
    "very",
    "quite",
    "long",
    "short",
    "old",
    "new",
]
TEXT_COL, LABEL_COL, TAGS_COL, TAG_DELIM = "text", "label", "tags", ";"
KINDS = ("three_class", "multi_label", "lm", "backwards", "backwards_lm")
LM_VOCAB_SIZE = 60_000  # fastai's default max_vocab
REFUSED_KINDS = ("tabular", "custom_model", "other_tokenizer")


def corpus(rows: int = 240, seed: int = SEED) -> pd.DataFrame:
    """Texts of filler words with 2-3 signal words; a label per text and 0-3 tags."""
    rng = random.Random(seed)
    records = []
    for i in range(rows):
        label = list(THREE_CLASSES)[i % len(THREE_CLASSES)]
        tags = [t for t in TAGS if rng.random() < 0.4]
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 18))]
        words += [rng.choice(THREE_CLASSES[label]) for _ in range(2)]
        words += [rng.choice(TAGS[t]) for t in tags]
        rng.shuffle(words)
        words[0] = words[0].capitalize()
        records.append((" ".join(words) + rng.choice([".", "!", "..."]), label, ";".join(tags)))
    return pd.DataFrame(records, columns=[TEXT_COL, LABEL_COL, TAGS_COL])


class BagOfWords(torch.nn.Module):
    """A user's own text model (not AWD_LSTM): the exporter must refuse it."""

    def __init__(self, vocab_size: int, n_out: int) -> None:
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocab_size, 8)
        self.head = torch.nn.Linear(8, n_out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids))


def _quiet(learn: Any) -> Any:
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    return learn


def build_all(out: Path) -> dict[str, Path]:
    """Train and `learn.export()` the four learners; a few seconds each on a CPU."""
    import numpy as np
    from fastai.text.all import (
        AWD_LSTM,
        BCEWithLogitsLossFlat,
        ColReader,
        DataBlock,
        MultiCategoryBlock,
        RandomSplitter,
        TextBlock,
        TextDataLoaders,
        language_model_learner,
        text_classifier_learner,
    )
    from fastai.text.models.awdlstm import awd_lstm_clas_config, awd_lstm_lm_config

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    df = corpus()
    paths = {kind: (out / f"{kind}.pkl").resolve() for kind in KINDS}

    clf_config = dict(awd_lstm_clas_config, emb_sz=24, n_hid=40, n_layers=2)
    dls = TextDataLoaders.from_df(
        df, text_col=TEXT_COL, label_col=LABEL_COL, valid_pct=0.2, bs=16, seq_len=16, seed=SEED
    )
    learn = _quiet(
        text_classifier_learner(
            dls, AWD_LSTM, config=clf_config, pretrained=False, seq_len=16, max_len=48
        )
    )
    learn.fit_one_cycle(4, 2e-2)
    learn.export(paths["three_class"])

    block = DataBlock(
        blocks=(TextBlock.from_df(TEXT_COL, seq_len=16), MultiCategoryBlock),
        get_x=ColReader(TEXT_COL),
        get_y=ColReader(TAGS_COL, label_delim=TAG_DELIM),
        splitter=RandomSplitter(0.2, seed=SEED),
    )
    learn = _quiet(
        text_classifier_learner(
            block.dataloaders(df, bs=16),
            AWD_LSTM,
            config=dict(clf_config, n_layers=1),
            pretrained=False,
            loss_func=BCEWithLogitsLossFlat(thresh=0.4),  # not fastai's 0.5: export must read it
        )
    )
    learn.fit_one_cycle(5, 2e-2)
    learn.export(paths["multi_label"])

    lm_config = dict(
        awd_lstm_lm_config, emb_sz=20, n_hid=44, n_layers=3, tie_weights=False, out_bias=True
    )
    # fastai's default max_vocab (60,000) filled: the corpus' own tokens, then words it never uses
    small = TextDataLoaders.from_df(df, text_col=TEXT_COL, is_lm=True, bs=8, seq_len=20, seed=SEED)
    vocab = [t for t in small.vocab if t != "xxfake"]
    vocab += [f"zzword{i}" for i in range(LM_VOCAB_SIZE - len(vocab))]
    lm_block = DataBlock(
        blocks=TextBlock.from_df(TEXT_COL, is_lm=True, seq_len=20, vocab=vocab),
        get_x=ColReader(TEXT_COL),
        splitter=RandomSplitter(0.2, seed=SEED),
    )
    dls_lm = lm_block.dataloaders(df, bs=8, seq_len=20)
    learn = _quiet(language_model_learner(dls_lm, AWD_LSTM, config=lm_config, pretrained=False))
    learn.fit_one_cycle(2, 1e-2)
    learn.export(paths["lm"])

    dls_bwd = TextDataLoaders.from_df(
        df, text_col=TEXT_COL, label_col=LABEL_COL, valid_pct=0.2, bs=16, seed=SEED, backwards=True
    )
    learn = _quiet(text_classifier_learner(dls_bwd, AWD_LSTM, config=clf_config, pretrained=False))
    learn.fit_one_cycle(4, 2e-2)
    learn.export(paths["backwards"])

    dls_bwd_lm = TextDataLoaders.from_df(
        df, text_col=TEXT_COL, is_lm=True, bs=8, seq_len=20, seed=SEED, backwards=True
    )
    small_lm = dict(awd_lstm_lm_config, emb_sz=16, n_hid=24, n_layers=2)
    learn = _quiet(language_model_learner(dls_bwd_lm, AWD_LSTM, config=small_lm, pretrained=False))
    learn.fit_one_cycle(1, 1e-2)
    learn.export(paths["backwards_lm"])
    return paths


def build_refused(out: Path) -> dict[str, Path]:
    """Learners the exporter must refuse: tabular data, a text learner with its own model, a
    text learner with a tokenizer other than fastai's SpacyTokenizer (as SentencePiece is)."""
    from fastai.tabular.all import Categorify, TabularDataLoaders, tabular_learner
    from fastai.text.all import (
        BaseTokenizer,
        CategoryBlock,
        ColReader,
        CrossEntropyLossFlat,
        DataBlock,
        Learner,
        RandomSplitter,
        TextBlock,
        TextDataLoaders,
    )

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    df = corpus(60)
    paths = {kind: (out / f"{kind}.pkl").resolve() for kind in REFUSED_KINDS}
    table = pd.DataFrame(
        {"a": range(40), "b": [i % 3 for i in range(40)], "y": [i % 2 for i in range(40)]}
    )
    tab = tabular_learner(
        TabularDataLoaders.from_df(
            table,
            procs=[Categorify],
            cont_names=["a"],
            cat_names=["b"],
            y_names="y",
            y_block=CategoryBlock(),
            bs=8,
        )
    )
    tab.export(paths["tabular"])

    dls = TextDataLoaders.from_df(df, text_col=TEXT_COL, label_col=LABEL_COL, bs=8, seed=SEED)
    custom = Learner(dls, BagOfWords(len(dls.vocab[0]), 3), loss_func=CrossEntropyLossFlat())
    custom.export(paths["custom_model"])
    block = DataBlock(
        blocks=(TextBlock.from_df(TEXT_COL, tok=BaseTokenizer()), CategoryBlock),
        get_x=ColReader(TEXT_COL),
        get_y=ColReader(LABEL_COL),
        splitter=RandomSplitter(0.2, seed=SEED),
    )
    from fastai.text.all import AWD_LSTM, text_classifier_learner
    from fastai.text.models.awdlstm import awd_lstm_clas_config

    other = text_classifier_learner(
        block.dataloaders(df, bs=8),
        AWD_LSTM,
        config=dict(awd_lstm_clas_config, emb_sz=8, n_hid=8, n_layers=1),
        pretrained=False,
    )
    other.export(paths["other_tokenizer"])
    return paths
