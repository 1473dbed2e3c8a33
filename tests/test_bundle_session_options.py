"""The serving session options (bundle.runtime.session_options) change memory use, not answers:
a session built with them gives the same outputs as one with onnxruntime's defaults."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from bundle import ClassifierModel, LanguageModel
from bundle.classifier_rows import GraphRows
from bundle.runtime import session_options


def default_session(path: str) -> ort.InferenceSession:
    """onnxruntime's own defaults (memory pattern and arena on), one thread like ours."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    assert opts.enable_mem_pattern and opts.enable_cpu_mem_arena
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def test_memory_pattern_off_and_arena_on() -> None:
    """No block planned per input shape; the arena reuses the largest run's activations, which
    the server bounds (chunked classifier runs, prompt slices)."""
    opts = session_options()
    assert not opts.enable_mem_pattern
    assert opts.enable_cpu_mem_arena


def test_classifier_answers_as_with_default_options(tiny_classifier: ClassifierModel) -> None:
    reference = default_session(str(tiny_classifier.manifest.model_path))
    rng = np.random.default_rng(0)
    for lengths in ([3], [7, 2, 5], [40, 1, 13, 29]):
        batch = [list(rng.integers(4, tiny_classifier.vocab_size, n)) for n in lengths]
        ours = tiny_classifier.predict_ids(batch, max_tokens=16)
        theirs = GraphRows(reference, tiny_classifier.pad_id, tiny_classifier.backwards)(
            batch, None, 16
        )
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_language_model_steps_as_with_default_options(tiny_lm: LanguageModel) -> None:
    reference = default_session(str(tiny_lm.manifest.model_path))
    ids = np.array([[tiny_lm.bos_id, 5, 9, tiny_lm.vocab_size - 1]], dtype=np.int64)
    logits, state = tiny_lm.step(ids, tiny_lm.initial_state(1))
    feed: dict[str, np.ndarray] = {"input_ids": ids}
    for i, s in enumerate(tiny_lm.manifest.raw["states"]):
        feed[s["h"]], feed[s["c"]] = tiny_lm.initial_state(1)[2 * i : 2 * i + 2]
    expected, *expected_state = reference.run(None, feed)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)
    for got, want in zip(state, expected_state, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
