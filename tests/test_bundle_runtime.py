"""bundle/runtime.py's classifier calls onnxruntime's C++ run directly (bundle/onnx_run.py's
`unchecked_run`): the same probabilities as the public `session.run`, and the caller's
RunOptions still reach the run (the request deadline's terminate flag, server/inference/guards.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from bundle import ClassifierModel
from bundle.classifier_rows import GraphRows
from bundle.onnx_run import unchecked_run

TEXTS = ["A fine film.", "Dull, long and badly acted from start to finish.", "Loved it!!!"]


def test_classifier_answers_as_the_public_run_bit_for_bit(tiny_classifier: ClassifierModel) -> None:
    assert unchecked_run(tiny_classifier.session) != tiny_classifier.session.run
    batch = [tiny_classifier.tokenizer.encode(text) for text in TEXTS]
    public = GraphRows(tiny_classifier.session, tiny_classifier.pad_id, tiny_classifier.backwards)
    public._run = tiny_classifier.session.run  # type: ignore[method-assign,assignment]
    for max_tokens in (None, 4):
        assert np.array_equal(
            tiny_classifier.predict_ids(batch, max_tokens=max_tokens),
            public(batch, None, max_tokens),
        )


def test_run_options_still_stop_the_run(tiny_classifier: ClassifierModel) -> None:
    options = ort.RunOptions()
    options.terminate = True
    with pytest.raises(Exception, match=r"(?i)terminat"):
        tiny_classifier.predict_ids([tiny_classifier.tokenizer.encode(TEXTS[0])], options)
    assert tiny_classifier.predict_ids([tiny_classifier.tokenizer.encode(TEXTS[0])]).shape == (
        1,
        len(tiny_classifier.labels),
    )
