"""Key functionality on the shipped bundles in models/ (skipped while none are shipped).

These are the product's promises: a clearly positive review is `pos`, clearly negative ones are
`neg`, and the demo prompt continues in readable English. They run the real server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_harness import REPO_ROOT, RunningServer, start_server

SHIPPED = REPO_ROOT / "models"
HAS_CLASSIFIER = (SHIPPED / "imdb-sentiment" / "manifest.json").is_file()
HAS_LM = (SHIPPED / "imdb-lm" / "manifest.json").is_file()

pytestmark = pytest.mark.skipif(
    not (HAS_CLASSIFIER or HAS_LM), reason="models/ holds no shipped bundles yet (python -m export)"
)
needs_classifier = pytest.mark.skipif(
    not HAS_CLASSIFIER, reason="no classifier bundle in models/ (python -m export)"
)
needs_lm = pytest.mark.skipif(not HAS_LM, reason="no language-model bundle shipped")

EXAMPLES = [
    ("I loved this movie, the acting was wonderful", "pos"),
    ("Don't waste your time, it was dreadful", "neg"),
    ("not good at all", "neg"),
    ("One of the best films I have ever seen. A masterpiece.", "pos"),
    ("Boring, badly acted and far too long. The worst film of the year.", "neg"),
]


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(SHIPPED, tmp_path_factory.mktemp("shipped-logs"))
    yield server
    server.stop()


@needs_classifier
@pytest.mark.parametrize("text,label", EXAMPLES)
def test_clear_reviews_get_the_right_label(
    shipped_server: RunningServer, text: str, label: str
) -> None:
    body = shipped_server.post("/classify", json={"text": text}).json()
    assert body["label"] == label, body
    assert body["probabilities"][label] > 0.5


@needs_classifier
def test_batch_agrees_with_the_examples(shipped_server: RunningServer) -> None:
    results = shipped_server.post("/classify", json={"texts": [t for t, _ in EXAMPLES]}).json()
    assert [r["label"] for r in results["results"]] == [label for _, label in EXAMPLES]


@needs_lm
def test_demo_prompt_continues_in_english(shipped_server: RunningServer) -> None:
    prompt = "My favorite part was when"
    body = shipped_server.post(
        "/generate",
        json={"prompt": prompt, "n_words": 40, "n_samples": 3, "temperature": 0.75, "seed": 0},
    ).json()
    # the 30 most frequent English words (a list of 12 failed on a fine sample heavy with names:
    # "... Hector, Mae, Montage sequence, Steve and Mrs. Lee's Family House show!! What was this ...")
    common = {
        "the",
        "be",
        "to",
        "of",
        "and",
        "a",
        "in",
        "that",
        "have",
        "i",
        "it",
        "for",
        "not",
        "on",
        "with",
        "he",
        "as",
        "you",
        "do",
        "at",
        "this",
        "but",
        "his",
        "by",
        "from",
        "they",
        "we",
        "she",
        "was",
        "is",
    }
    for sample in body["samples"]:
        assert sample.startswith(prompt)
        words = sample[len(prompt) :].lower().split()
        assert len(words) >= 15  # 40 tokens: words plus punctuation
        assert sum(word.strip(".,!?\"'") in common for word in words) >= 3, sample
