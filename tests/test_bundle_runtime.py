"""bundle/runtime.py's classifier calls onnxruntime's C++ run directly (`unchecked_run`): the
same probabilities as the public `session.run`, and the caller's RunOptions still reach the run
(the request deadline's terminate flag, server/inference/guards.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from bundle import ClassifierModel
from bundle.runtime import unchecked_run

TEXTS = ["A fine film.", "Dull, long and badly acted from start to finish.", "Loved it!!!"]


def test_classifier_answers_as_the_public_run_bit_for_bit(tiny_classifier: ClassifierModel) -> None:
    assert unchecked_run(tiny_classifier.session) != tiny_classifier.session.run
    batch = [tiny_classifier.tokenizer.encode(text) for text in TEXTS]
    lengths = np.array([len(ids) for ids in batch], dtype=np.int64)
    ids = np.full((len(batch), int(lengths.max())), tiny_classifier.pad_id, dtype=np.int64)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq[::-1] if tiny_classifier.backwards else seq
    public = tiny_classifier.session.run(["probabilities"], {"input_ids": ids, "lengths": lengths})[
        0
    ]
    assert np.array_equal(tiny_classifier.predict_ids(batch), public)


def test_run_options_still_stop_the_run(tiny_classifier: ClassifierModel) -> None:
    options = ort.RunOptions()
    options.terminate = True
    with pytest.raises(Exception, match=r"(?i)terminat"):
        tiny_classifier.predict_ids([tiny_classifier.tokenizer.encode(TEXTS[0])], options)
    assert tiny_classifier.predict_ids([tiny_classifier.tokenizer.encode(TEXTS[0])]).shape == (
        1,
        len(tiny_classifier.labels),
    )
