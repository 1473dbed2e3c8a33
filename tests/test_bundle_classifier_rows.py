"""bundle/classifier_rows.py (GraphRows): texts fed in time chunks with the LSTM and pooling
state carried give the answers of one whole run (fp32: to float rounding; int8: within its
quantization noise, finite also when a row's pooling window has not begun), every run stays
under `max_tokens`, rows leave as their texts end and come back in order; bundles with the older
whole-sequence graph are still served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle import ClassifierModel, load_bundle
from bundle.classifier_rows import GraphRows, token_runs
from bundle.manifest import write_manifest

LENGTHS = [30, 1, 90, 12, 61, 2, 45]  # unsorted, so rows must come back in input order


def batch_of(model: ClassifierModel, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[model.bos_id, *rng.integers(4, model.vocab_size, n - 1).tolist()] for n in lengths]


@pytest.fixture(scope="module")
def fp32_classifier(tiny_bundles: Path) -> ClassifierModel:
    directory = tiny_bundles / "imdb-sentiment"
    model = load_bundle(directory, model_path=directory / "model.fp32.onnx")
    assert isinstance(model, ClassifierModel)
    return model


class RecordedRuns:
    """Wraps a GraphRows' run: keeps each run's input_ids and offset."""

    def __init__(self, rows: GraphRows) -> None:
        self.inner, self.calls = rows._run, []  # type: ignore[attr-defined]
        rows._run = self  # type: ignore[attr-defined]

    def __call__(self, names: list[str], feed: dict, options: object) -> list[np.ndarray]:
        self.calls.append((feed["input_ids"].copy(), int(feed.get("offset", [0])[0])))
        return self.inner(names, feed, options)


def test_the_shipped_layout_is_chunked(tiny_classifier: ClassifierModel) -> None:
    assert isinstance(tiny_classifier.rows, GraphRows) and tiny_classifier.rows.chunked


@pytest.mark.parametrize("max_tokens", [1, 5, 23, 64, 1000, None])
def test_chunked_runs_answer_as_each_text_alone_in_fp32(
    fp32_classifier: ClassifierModel, max_tokens: int | None
) -> None:
    batch = batch_of(fp32_classifier, LENGTHS)
    alone = np.concatenate([fp32_classifier.predict_ids([ids]) for ids in batch])
    together = fp32_classifier.predict_ids(batch, max_tokens=max_tokens)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_int8_chunks_stay_within_int8_noise(
    tiny_classifier: ClassifierModel, fp32_classifier: ClassifierModel
) -> None:
    """int8 quantizes each run's inputs with one scale, so chunking moves the answer a little:
    on average no further from fp32 than the whole int8 run is (2x allowed), same answers.
    A chunk loop that lost the state between runs is off by far more (the texts run to 90)."""
    batches = [batch_of(tiny_classifier, LENGTHS, seed) for seed in range(4)]
    reference = np.concatenate([fp32_classifier.predict_ids(b) for b in batches])
    whole = np.concatenate([tiny_classifier.predict_ids(b) for b in batches])
    for max_tokens in (1, 8, 64):
        chunked = np.concatenate(
            [tiny_classifier.predict_ids(b, max_tokens=max_tokens) for b in batches]
        )
        assert np.abs(chunked - reference).mean() <= 2 * np.abs(whole - reference).mean()
        assert (chunked.argmax(1) == whole.argmax(1)).all()


def test_int8_answers_stay_finite_before_a_long_texts_pooling_window(
    tiny_classifier: ClassifierModel, fp32_classifier: ClassifierModel
) -> None:
    """A text longer than max_len pools only its last positions, so for its first chunks its
    running max is still -inf while short texts beside it end; int8 quantizes the head's input
    over the whole batch, so a graph that fed that -inf to the head answered NaN for every row
    (found by the benchmark's concurrent requests)."""
    arch = tiny_classifier.manifest.architecture
    long_text = arch["max_len"] + 3 * arch["bptt"]
    batch = batch_of(tiny_classifier, [long_text, 30, 5, 61])
    for max_tokens in (8, 64, None):
        answers = tiny_classifier.predict_ids(batch, max_tokens=max_tokens)
        assert np.isfinite(answers).all(), max_tokens
        reference = fp32_classifier.predict_ids(batch, max_tokens=max_tokens)
        assert (answers.argmax(1) == reference.argmax(1)).all()


def test_every_run_stays_under_max_tokens_and_rows_leave_as_they_end(
    tiny_classifier: ClassifierModel,
) -> None:
    rows = GraphRows(tiny_classifier.session, tiny_classifier.pad_id, backwards=False)
    runs = RecordedRuns(rows)
    lengths = [10, 4, 2]
    rows(batch_of(tiny_classifier, lengths), None, 6)
    shapes = [(ids.shape, offset) for ids, offset in runs.calls]
    # 3 rows: 2 tokens each; the 2-token text ends, 2 rows: 3 tokens; the 4-token one ends (at
    # 5, past its end: padded), 1 row: the rest of the 10-token text in one run
    assert shapes == [((3, 2), 0), ((2, 3), 2), ((1, 5), 5)]
    for ids, _ in runs.calls:
        assert ids.size <= 6


def test_backward_rows_are_reversed_before_the_graph(fp32_classifier: ClassifierModel) -> None:
    session = fp32_classifier.session
    backward = GraphRows(session, fp32_classifier.pad_id, backwards=True)
    forward = GraphRows(session, fp32_classifier.pad_id, backwards=False)
    batch = batch_of(fp32_classifier, [7, 3, 12])
    np.testing.assert_array_equal(
        backward(batch, None, 4), forward([ids[::-1] for ids in batch], None, 4)
    )


def test_token_runs_cover_every_text_once_within_the_budget() -> None:
    lengths = [5, 300, 40, 41, 1000, 7, 120, 39]
    runs = token_runs(lengths, max_tokens=256)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        longest = max(lengths[i] for i in run)
        assert len(run) * longest <= 256 or len(run) == 1, run  # 300 and 1000 run alone
    assert len(token_runs(lengths, max_tokens=10**6)) == 1


@pytest.fixture(scope="module")
def whole_sequence_bundle(
    tiny_run_and_bundles: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny classifier as bundles exported before chunked graphs were: its fastai learner
    exported with the whole-sequence graph (fp32), in a copy of the bundle."""
    pytest.importorskip("fastai")
    from export.learner import load_learner_file
    from export.onnx_graphs import export_classifier
    from export.torch_modules import ClassifierGraph

    run, bundles = tiny_run_and_bundles
    directory = tmp_path_factory.mktemp("whole") / "imdb-sentiment"
    shutil.copytree(bundles / "imdb-sentiment", directory)
    learn = load_learner_file(run / "classifier.pkl")
    raw = json.loads((directory / "manifest.json").read_text())
    old_file = raw["model"]["file"]
    (directory / old_file).unlink()
    export_classifier(ClassifierGraph(learn.model), directory / "model.onnx")
    raw["model"].update(file="model.onnx", format="onnx")
    raw["model"]["inputs"] = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"]},
    ]
    raw["files"] = {n: v for n, v in raw["files"].items() if n != old_file}
    raw["files"]["model.onnx"] = {}
    write_manifest(directory, raw)
    return directory


@pytest.mark.parametrize("max_tokens", [1, 40, None])
def test_whole_sequence_bundles_are_still_served(
    whole_sequence_bundle: Path, fp32_classifier: ClassifierModel, max_tokens: int | None
) -> None:
    """Older bundles run whole rows, grouped into runs under max_tokens by token_runs."""
    old = load_bundle(whole_sequence_bundle)
    assert isinstance(old, ClassifierModel) and isinstance(old.rows, GraphRows)
    assert not old.rows.chunked
    batch = batch_of(old, LENGTHS)
    np.testing.assert_allclose(
        old.predict_ids(batch, max_tokens=max_tokens),
        fp32_classifier.predict_ids(batch),
        rtol=0,
        atol=1e-6,
    )
