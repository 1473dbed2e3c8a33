"""Named size configurations. One place for every training knob, so a run is reproducible
from its name (plus the data path) and the name is recorded in the bundle manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    name: str
    # AWD-LSTM size
    emb_sz: int
    n_hid: int
    n_layers: int
    # vocabulary (built from the LM corpus; shared by LM and classifier)
    max_vocab: int
    min_freq: int
    # data: how many documents to use (None = all). LM text is train + unsup, never test.
    lm_docs: int | None
    clf_docs: int | None
    valid_pct: float
    # language model schedule
    bptt: int
    lm_bs: int
    lm_epochs: int
    lm_lr: float
    lm_drop_mult: float
    # classifier schedule (ULMFiT gradual unfreezing: head, last two groups, last three, all)
    clf_bs: int
    clf_lr: float
    clf_drop_mult: float
    clf_epochs: tuple[int, ...]  # epochs per unfreezing stage: (-1, -2, -3, all); 0 skips a stage
    max_len: int  # classifier pools over at most the last max_len tokens (fastai's max_len)
    clf_last_stage_fraction: float = (
        1.0  # run the final stage on this fraction of each epoch (CPU budget)
    )
    clf_init: str = "lm"  # "lm": ULMFiT, start from the LM encoder; "scratch": random init, flat lr
    pretrained: bool = False  # fastai's WikiText-103 weights: downloads, so off by default
    seed: int = 42
    # fastai `backwards=True`: LM and classifier read each document's tokens in reverse order
    # (ULMFiT's bidirectional recipe: a backward pair, ensembled at serving with a forward one)
    backwards: bool = False
    n_workers: int = 2  # tokenization processes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONFIGS: dict[str, TrainConfig] = {
    # For tests: trains in seconds on a few hundred short documents.
    "tiny": TrainConfig(
        name="tiny",
        emb_sz=32,
        n_hid=64,
        n_layers=2,
        max_vocab=2000,
        min_freq=2,
        lm_docs=None,
        clf_docs=None,
        valid_pct=0.2,
        bptt=24,
        lm_bs=8,
        lm_epochs=1,
        lm_lr=3e-3,
        lm_drop_mult=0.3,
        clf_bs=16,
        clf_lr=1e-2,
        clf_drop_mult=0.1,
        clf_epochs=(0, 0, 0, 4),
        max_len=24 * 20,
        n_workers=1,
        # from scratch: a tiny LM's encoder leaves many test reviews near p=0.5, where int8 vs fp32
        # agreement (an export bound) becomes a coin flip; a confident model keeps the tests exact
        clf_init="scratch",
    ),
    # The CPU recipe of the shipped models, sized to the ~1 core-hour a shared 2-core machine
    # gave it (docs/training.md): a small LM corpus, a subset of train for the classifier.
    "compact": TrainConfig(
        name="compact",
        emb_sz=200,
        n_hid=400,
        n_layers=3,
        max_vocab=15000,
        min_freq=3,
        lm_docs=5000,
        clf_docs=None,
        valid_pct=0.1,
        bptt=72,
        lm_bs=64,
        lm_epochs=1,
        lm_lr=2e-2,
        lm_drop_mult=0.5,
        clf_bs=64,
        clf_lr=2e-2,
        clf_drop_mult=0.5,
        clf_epochs=(1, 0, 0, 1),
        max_len=72 * 20,
        clf_last_stage_fraction=0.25,
    ),
    # fastai's default AWD-LSTM (emb 400, hidden 1152, 3 layers), all of train + unsup: a GPU recipe.
    "full": TrainConfig(
        name="full",
        emb_sz=400,
        n_hid=1152,
        n_layers=3,
        max_vocab=60000,
        min_freq=3,
        lm_docs=None,
        clf_docs=None,
        valid_pct=0.1,
        bptt=72,
        lm_bs=128,
        lm_epochs=10,
        lm_lr=2e-3 * 10,
        lm_drop_mult=1.0,
        clf_bs=64,
        clf_lr=2e-2,
        clf_drop_mult=0.5,
        clf_epochs=(1, 1, 1, 2),
        max_len=72 * 20,
    ),
    # The shipped models: a mid-size AWD-LSTM whose two int8 bundles stay ~30 MB together, trained
    # on a GPU over all of train + unsup (docs/training.md). Epoch counts are upper bounds: on a lent
    # machine `--lm-seconds` / `--clf-seconds` fit the schedule to the minutes it has.
    "gpu": TrainConfig(
        name="gpu",
        emb_sz=256,
        n_hid=768,
        n_layers=3,
        max_vocab=20000,
        min_freq=3,
        lm_docs=None,
        clf_docs=None,
        valid_pct=0.1,
        bptt=72,
        lm_bs=256,
        lm_epochs=10,
        lm_lr=1e-2,
        lm_drop_mult=0.2,
        clf_bs=128,
        clf_lr=2e-2,
        clf_drop_mult=0.5,
        clf_epochs=(1, 1, 1, 2),
        max_len=72 * 20,
        n_workers=2,
    ),
}


def get_config(name: str, **overrides: Any) -> TrainConfig:
    """Look up a named config; overrides (e.g. from the CLI) replace single fields."""
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **{k: v for k, v in overrides.items() if v is not None})
