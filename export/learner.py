"""Read everything a bundle needs from a fastai learner saved with `learn.export()`, or refuse it.

Every fact (task, labels, vocabulary, sizes, tokenizer, bptt / max_len, direction, multi-label
threshold) comes from the learner itself: its model, its loss function and the transforms its
DataLoaders kept. What this project cannot serve exactly is refused with UnsupportedLearner,
whose message is one line for the user, before anything is written. torch and fastai are
imported inside the functions: the CLI refuses a wrong file before paying for them.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_LANG = "en"  # the spaCy tables in tokenizer.json are those of blank English


class UnsupportedLearner(Exception):
    """The file is not a learner this exporter can turn into an exact bundle (one-line reason)."""


@dataclass(frozen=True)
class LearnerFacts:
    """What a bundle records about its learner."""

    task: str  # "classify" or "generate"
    vocab: list[str]
    emb_size: int
    hidden_size: int
    layer_sizes: list[int]
    backwards: bool
    labels: list[str]  # classify only
    multi_label: bool  # classify only: per-label sigmoids
    threshold: float | None  # multi-label only
    bptt: int | None  # classify: SentenceEncoder chunk; generate: the LM DataLoader's seq_len
    max_len: int | None  # classify only (None: no limit)
    tied_decoder: bool  # generate only

    def architecture(self) -> dict[str, Any]:
        arch: dict[str, Any] = {
            "arch": "AWD_LSTM",
            "vocab_size": len(self.vocab),
            "emb_size": self.emb_size,
            "hidden_size": self.hidden_size,
            "n_layers": len(self.layer_sizes),
            "layer_sizes": self.layer_sizes,
            "pad_id": self.vocab.index("xxpad"),
            "bos_id": self.vocab.index("xxbos"),
            "unk_id": self.vocab.index("xxunk"),
        }
        if self.bptt is not None:
            arch["bptt"] = self.bptt
        if self.task == "classify":
            arch["max_len"] = self.max_len or 0  # 0: no limit (as the classifier graph reads it)
        else:
            arch["tied_decoder"] = self.tied_decoder
        return arch

    def manifest_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = {"direction": "backward" if self.backwards else "forward"}
        if self.task == "classify":
            keys["labels"] = self.labels
            keys["multi_label"] = self.multi_label
            if self.threshold is not None:
                keys["threshold"] = self.threshold
        return keys


PICKLE_PROTOCOL_2_PLUS = b"\x80"  # first byte of a pickle of protocol 2 or later


def check_learner_file(path: Path) -> None:
    """Cheap checks before torch and fastai are imported (seconds): the file exists and is in
    one of torch.save's two formats, a zip archive or a bare pickle (fastai's learn.export)."""
    if not path.is_file():
        raise UnsupportedLearner(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(1)
    if not zipfile.is_zipfile(path) and head != PICKLE_PROTOCOL_2_PLUS:
        raise UnsupportedLearner(
            f"{path}: not a fastai learner saved with learn.export() (neither torch's zip format "
            "nor a pickle)"
        )


def load_learner_file(path: Path) -> Any:
    """fastai's `load_learner` on the CPU, with every way a file can be wrong made one line."""
    check_learner_file(path)
    from fastai.learner import load_learner

    with warnings.catch_warnings():
        # fastai warns that load_learner unpickles (can run code): loading a learner is
        # unpickling by nature and the user named this file, so the warning tells them nothing.
        warnings.filterwarnings("ignore", message=".*insecure pickle module", category=UserWarning)
        # unpickling imports fastai.tabular, which sets a pandas option pandas 3 deprecated:
        # a note for fastai's developers, nothing an exporting user can act on.
        warnings.filterwarnings("ignore", message=".*mode.chained_assignment")
        try:
            learn = load_learner(path, cpu=True)
        except (ModuleNotFoundError, AttributeError) as e:
            raise UnsupportedLearner(
                f"{path}: cannot load the learner, it needs code that is not importable here "
                f"({e}); define custom functions in a module, not in the notebook"
            ) from None
        except (
            pickle.UnpicklingError,
            EOFError,
            zipfile.BadZipFile,
            RuntimeError,
            ValueError,
        ) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UnsupportedLearner(
                f"{path}: not a fastai learner saved with learn.export() ({first})"
            ) from None
    from fastai.learner import Learner

    if not isinstance(learn, Learner):
        raise UnsupportedLearner(f"{path}: holds a {type(learn).__name__}, not a fastai Learner")
    return learn


def _item_pipelines(learn: Any) -> list[Any]:
    """The per-item transform pipelines the learner's DataLoaders kept ([x] or [x, y])."""
    dataset = getattr(getattr(learn.dls, "train", None), "dataset", None)
    tfms = getattr(dataset, "tfms", None)
    if tfms is None:
        return []
    return list(tfms) if isinstance(tfms, list | tuple) or hasattr(tfms, "items") else [tfms]


def _text_pipeline(learn: Any) -> tuple[Any, Any, bool]:
    """(fastai Tokenizer, Numericalize, reversed) of the input pipeline, or refuse."""
    from fastai.text.core import Tokenizer
    from fastai.text.data import Numericalize

    for pipeline in _item_pipelines(learn):
        fs = list(getattr(pipeline, "fs", []))
        tokenizers = [t for t in fs if isinstance(t, Tokenizer)]
        numericalizers = [t for t in fs if isinstance(t, Numericalize)]
        if tokenizers and numericalizers:
            # fastai's `backwards=True` appends its `reverse_text` transform (found by name: an
            # unpickled Transform is a copy, not fastai's object)
            backwards = any(getattr(t, "name", "") == "reverse_text" for t in fs)
            return tokenizers[0], numericalizers[0], backwards
    kind = type(learn.dls).__name__
    raise UnsupportedLearner(
        f"not a text learner: its DataLoaders ({kind}) hold no fastai Tokenizer + Numericalize "
        "(vision, tabular and custom-data learners are not supported)"
    )


def _check_tokenizer(tokenizer: Any) -> None:
    """Only fastai's default: SpacyTokenizer (blank English, default special tokens) with the
    default rules; tokenizer.json replays exactly that and nothing else."""
    from fastai.text.core import SpacyTokenizer, defaults

    inner = tokenizer.tok
    if type(inner) is not SpacyTokenizer:
        raise UnsupportedLearner(
            f"unsupported tokenizer {type(inner).__name__}: only fastai's default SpacyTokenizer "
            "(English) is supported"
        )
    lang = getattr(getattr(inner.pipe, "__self__", None), "lang", None)
    if lang != TOKENIZER_LANG:
        raise UnsupportedLearner(
            f"unsupported tokenizer language {lang!r}: only spaCy {TOKENIZER_LANG!r} is supported"
        )
    if list(inner.special_toks) != list(defaults.text_spec_tok):
        raise UnsupportedLearner("unsupported tokenizer: special tokens differ from fastai's")
    names = [getattr(r, "__name__", repr(r)) for r in tokenizer.rules]
    if list(tokenizer.rules) != list(defaults.text_proc_rules):
        raise UnsupportedLearner(
            f"unsupported tokenizer rules {names}: only fastai's defaults.text_proc_rules are"
        )


def _awd_lstm(module: Any) -> Any:
    from fastai.text.models.awdlstm import AWD_LSTM

    if type(module) is not AWD_LSTM:
        raise UnsupportedLearner(
            f"unsupported architecture {type(module).__name__}: only fastai's AWD_LSTM is supported"
        )
    if getattr(module, "n_dir", 1) != 1:
        raise UnsupportedLearner("unsupported architecture: bidirectional AWD_LSTM (bidir=True)")
    return module


def _model_kind(learn: Any) -> str:
    """'generate' for language_model_learner, 'classify' for text_classifier_learner."""
    import torch
    from fastai.text.models.core import LinearDecoder, PoolingLinearClassifier, SentenceEncoder

    model = learn.model
    parts = list(model.children()) if isinstance(model, torch.nn.Sequential) else []
    shape = " + ".join(type(p).__name__ for p in parts) or type(model).__name__
    if len(parts) == 2 and isinstance(parts[1], LinearDecoder):
        _awd_lstm(parts[0])
        return "generate"
    if (
        len(parts) == 2
        and isinstance(parts[0], SentenceEncoder)
        and isinstance(parts[1], PoolingLinearClassifier)
    ):
        _awd_lstm(parts[0].module)
        return "classify"
    raise UnsupportedLearner(
        f"unsupported model {shape}: only language_model_learner and text_classifier_learner "
        "with AWD_LSTM are supported"
    )


def _activation(learn: Any) -> str:
    """Which activation fastai's predict applies: compared numerically, not by class name,
    so any loss whose activation is softmax (label smoothing too) or sigmoid qualifies."""
    import torch

    activation = getattr(learn.loss_func, "activation", None)
    if activation is None:
        raise UnsupportedLearner(
            f"unsupported loss {type(learn.loss_func).__name__}: it has no activation"
        )
    probe = torch.linspace(-3, 3, 12).reshape(3, 4)
    with torch.no_grad():
        out = activation(probe)
    if torch.allclose(out, torch.softmax(probe, -1)):
        return "softmax"
    if torch.allclose(out, torch.sigmoid(probe)):
        return "sigmoid"
    raise UnsupportedLearner(
        f"unsupported loss {type(learn.loss_func).__name__}: its activation is neither softmax "
        "nor sigmoid"
    )


def _labels(learn: Any) -> tuple[list[str], bool]:
    """(labels in output order, multi-label) from the target pipeline's Categorize."""
    from fastai.data.transforms import Categorize, MultiCategorize

    for pipeline in _item_pipelines(learn)[1:]:
        for t in getattr(pipeline, "fs", []):
            if isinstance(t, MultiCategorize):
                return [str(v) for v in t.vocab], True
            if isinstance(t, Categorize):
                return [str(v) for v in t.vocab], False
    raise UnsupportedLearner(
        "unsupported targets: the classifier's labels are not a CategoryBlock or MultiCategoryBlock"
    )


def text_ids(learn: Any, texts: list[str]) -> list[list[int]]:
    """Ids as the learner's own predict path makes them (its Tokenizer, Numericalize and, for a
    backward learner, reversal): the torch side of every parity check."""
    tokenizer, numericalize, backwards = _text_pipeline(learn)
    ids = [numericalize(tokenizer(text)).tolist() for text in texts]
    return [seq[::-1] for seq in ids] if backwards else ids


def learner_facts(learn: Any) -> LearnerFacts:
    """Inspect a loaded learner; UnsupportedLearner (one line) for anything not served exactly."""
    from .torch_modules import layer_sizes

    tokenizer, numericalize, backwards = _text_pipeline(learn)
    task = _model_kind(learn)
    _check_tokenizer(tokenizer)
    vocab = [str(v) for v in numericalize.vocab]
    for special in ("xxunk", "xxpad", "xxbos"):
        if special not in vocab:
            raise UnsupportedLearner(f"unsupported vocabulary: it lacks fastai's {special}")
    model = learn.model
    if task == "generate":
        awd, decoder = model[0], model[1].decoder
        tied = decoder.weight.data_ptr() == awd.encoder.weight.data_ptr()
        seq_len = getattr(learn.dls.train, "seq_len", None)
        labels: list[str] = []
        multi, threshold, bptt, max_len = False, None, (int(seq_len) if seq_len else None), None
    else:
        awd, tied = model[0].module, False
        labels, multi = _labels(learn)
        expected = "sigmoid" if multi else "softmax"
        if _activation(learn) != expected:
            raise UnsupportedLearner(
                f"unsupported loss {type(learn.loss_func).__name__}: a "
                f"{'multi' if multi else 'single'}-label classifier needs a {expected} activation"
            )
        threshold = float(getattr(learn.loss_func, "thresh", 0.5)) if multi else None
        encoder = model[0]
        bptt, max_len = (
            int(encoder.bptt),
            (int(encoder.max_len) if encoder.max_len is not None else None),
        )
        n_out = model[1].layers[-1][-1].out_features if hasattr(model[1], "layers") else None
        if n_out is not None and n_out != len(labels):
            raise UnsupportedLearner(
                f"the classifier has {n_out} outputs but its DataLoaders name {len(labels)} labels"
            )
    if awd.encoder.weight.shape[0] != len(vocab):
        raise UnsupportedLearner(
            f"the model's embedding has {awd.encoder.weight.shape[0]} rows but its vocabulary "
            f"{len(vocab)} tokens"
        )
    return LearnerFacts(
        task=task,
        vocab=vocab,
        emb_size=int(awd.emb_sz),
        hidden_size=int(awd.n_hid),
        layer_sizes=layer_sizes(awd),
        backwards=backwards,
        labels=labels,
        multi_label=multi,
        threshold=threshold,
        bptt=bptt,
        max_len=max_len,
        tied_decoder=tied,
    )
