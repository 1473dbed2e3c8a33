"""bundle.tokenizer: loading tokenizer.json, ids, and readable decoding (whole and streamed).

Parity with fastai is tests/test_bundle_tokenizer_parity.py; this file checks what the server builds on:
a file written by export loads and behaves, importing the tokenizer stays free of spaCy / fastai /
torch, and generated token streams decode into readable text, identically in one go and token by
token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.tokenizer import DEFAULT_HIDDEN, StreamDecoder, Tokenizer, TokenizerError, decode_tokens

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]


# --------------------------------------------------------------------------- a real tokenizer.json
@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """tokenizer.json as export writes it, for a fastai-style vocab with xxfake padding."""
    pytest.importorskip("spacy")
    pytest.importorskip("fastai")
    from export.tokenizer_tables import write_tokenizer_json

    words = [
        "the",
        ".",
        ",",
        "movie",
        "was",
        "i",
        "did",
        "n't",
        "like",
        "it",
        "good",
        "bad",
        "!",
        "\n\n",
        "\n\u2581",
        "'s",
        "(",
        ")",
        '"',
        "-",
        "a",
        "great",
    ]
    vocab = SPECIALS + words
    vocab += ["xxfake"] * (8 - len(vocab) % 8)
    path = tmp_path_factory.mktemp("bundle") / "tokenizer.json"
    write_tokenizer_json(vocab, path)
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_file: Path) -> Tokenizer:
    return Tokenizer.from_file(tokenizer_file)


def test_from_file_reads_what_export_wrote(tokenizer_file: Path, tok: Tokenizer) -> None:
    raw = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    assert tok.vocab == raw["vocab"] and tok.vocab_size == len(raw["vocab"]) == 32
    assert (tok.unk_id, tok.pad_id, tok.bos_id) == (0, 1, 2)
    assert raw["special_ids"]["xxmaj"] == 8
    assert raw["spacy"]["version"] and raw["spacy"]["special_cases"]["xxbos"] == ["xxbos"]
    assert next(r["name"] for r in raw["text_rules"]) == "fix_html"
    assert b"\n" not in tokenizer_file.read_bytes()  # compact: one line, no indentation


def test_encode_and_ids(tok: Tokenizer) -> None:
    tokens = tok.tokenize("I didn't like it. The movie was GOOD!")
    assert tokens == [
        "xxbos",
        "i",
        "did",
        "n't",
        "like",
        "it",
        ".",
        "xxmaj",
        "the",
        "movie",
        "was",
        "xxup",
        "good",
        "!",
    ]
    ids = tok.encode("I didn't like it. The movie was GOOD!")
    assert ids == tok.tokens_to_ids(tokens) and tok.ids_to_tokens(ids) == tokens
    assert tok.encode_batch(["I didn't", "zorblax xxfake"]) == [
        tok.encode("I didn't"),
        tok.encode("zorblax xxfake"),
    ]
    # unknown words and fastai's xxfake padding entries both map to xxunk
    assert tok.encode("zorblax xxfake") == [tok.bos_id, tok.unk_id, tok.unk_id]
    with pytest.raises(ValueError):
        tok.ids_to_tokens([tok.vocab_size])
    with pytest.raises(ValueError):
        tok.ids_to_tokens([-1])


def test_decode_ids_and_tokens_agree(tok: Tokenizer) -> None:
    text = 'I didn\'t like it. The movie was GOOD!<br /><br />"Great" (a bad-good movie).'
    ids = tok.encode(text)
    assert tok.decode(ids) == tok.decode(tok.ids_to_tokens(ids))
    assert tok.decode(tok.tokenize(text)) == text.replace("<br /><br />", "\n\n")


def test_post_rule_marks_spaces_inside_tokens(tok: Tokenizer) -> None:
    assert "\n\u2581" in tok.tokenize("end. <br /> Start")
    assert "\n " in tok.tokenize("end. <br /> Start", apply_post_rules=False)
    assert tok.encode("end. <br /> Start")[3] == tok.vocab.index("\n\u2581")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.update(format="other"), "format"),
        (lambda t: t.update(schema_version=99), "schema_version"),
        (lambda t: t["text_rules"].append({"name": "translate_to_french"}), "translate_to_french"),
        (lambda t: t.pop("vocab"), "malformed"),
        (lambda t: t.update(unk_id=10_000), "outside"),
    ],
)
def test_bad_tables_are_refused(tokenizer_file: Path, mutate, message: str) -> None:
    tables = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    mutate(tables)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_dict(tables)


def test_from_file_refuses_non_json(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError):
        Tokenizer.from_file(bad)


def test_import_and_use_without_spacy_fastai_torch(tokenizer_file: Path) -> None:
    """The server image has none of them: loading and using a tokenizer must not import them."""
    code = textwrap.dedent(f"""
        import sys
        from bundle.tokenizer import Tokenizer
        tok = Tokenizer.from_file({str(tokenizer_file)!r})
        tok.decode(tok.encode("Hello <br /> WORLD &amp; friends :) http://x.org"))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("spacy", "fastai", "fastcore", "torch", "thinc"))
        print(heavy)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------- readable decoding
@pytest.mark.parametrize(
    "tokens, text",
    [
        (["xxbos", "xxmaj", "this", "is", "a", "xxup", "test", "."], "This is a TEST."),
        (
            ["xxbos", "i", "did", "n't", "like", "it", ",", "but", "it", "'s", "fine", "!"],
            "I didn't like it, but it's fine!",
        ),
        (
            ["xxup", "do", "n't", "xxmaj", "i", "'m", "xxmaj", "we", "'re", "they", "’ve"],
            "DON'T I'm We're they’ve",
        ),
        (["xxmaj", "gon", "na", "see", "it", ",", "ca", "n't", "wait"], "Gonna see it, can't wait"),
        (
            ["xxmaj", "it", "was", "s", "xxrep", "5", "o", "bad", "xxrep", "4", "!"],
            "It was sooooo bad!!!!",
        ),
        (["xxmaj", "b", "xxrep", "4", "a", "d", "movie", "."], "Baaaad movie."),
        (["xxwrep", "3", "xxmaj", "bad", "movie"], "Bad Bad Bad movie"),
        (["xxwrep", "4", "very", "good"], "Very very very very good"),
        (
            [
                "xxmaj",
                "a",
                "movie",
                "(",
                "xxunk",
                "really",
                ")",
                "[",
                "sic",
                "]",
                "costs",
                "$",
                "5",
                ".",
            ],
            "A movie (really) [sic] costs $5.",
        ),
        (
            ["xxmaj", "he", "said", '"', "no", '"', "and", "'", "maybe", "'", "."],
            "He said \"no\" and 'maybe'.",
        ),
        (["end", ".", "\n\n", "xxmaj", "next", "\n\u2581", "line"], "End.\n\nNext\nLine"),
        (["a", "<", "br", "/", ">", "b", "<", "br", ">", "c", "<", "d"], "A\nB\nC < d"),
        (
            ["well", "-", "known", "and", "/", "or", "#", "tag", "e", "-", "mail"],
            "Well-known and/or #tag e-mail",
        ),
        (["1", ",", "xxrep", "3", "0", "fans", "and", "10", "%", "..."], "1,000 fans and 10%..."),
        (["xxbos", "xxpad", "xxfake", "xxeos", "xxfld", "xxunk"], ""),
        (["wait", "\x85", "what", "\t", "?"], "Wait… what?"),
        (["hello", "xxrep"], "Hello"),
        (["xxrep", "x", "y"], "X y"),
        (
            ["what", "?", "!", "really", "…", "ok", ":", "fine", ";", "done", ":)"],
            "What?! Really… ok: fine; done :)",
        ),
    ],
)
def test_decode_is_readable(tokens: list[str], text: str) -> None:
    assert decode_tokens(tokens) == text


_TOKEN_ALPHABET = [
    *SPECIALS,
    "xxfake",
    "3",
    "12",
    "0",
    "the",
    "i",
    "it",
    "'s",
    "n't",
    "do",
    "gon",
    "na",
    "a",
    "d",
    "o",
    ".",
    ",",
    "!",
    "?",
    "(",
    ")",
    '"',
    "'",
    "-",
    "/",
    "<",
    "br",
    ">",
    "\n",
    "\n\n",
    "\n▁",
    " ",
    "\t",
    "…",
    ":)",
    "$",
    "%",
    "movie",
    "xxrep",
    "xxwrep",
    "xxmaj",
    "xxup",
]


@settings(max_examples=400, deadline=None)
@given(tokens=st.lists(st.sampled_from(_TOKEN_ALPHABET), max_size=40), cut=st.integers(0, 40))
def test_stream_matches_whole_decode(tokens: list[str], cut: int) -> None:
    """What the server streams (prompt pushed first, its output not re-sent) is exactly the rest
    of the final decode, and special tokens never show."""
    whole = decode_tokens(tokens)
    decoder = StreamDecoder()
    primed = "".join(decoder.push(t) for t in tokens[:cut])
    pieces = [decoder.push(t) for t in tokens[cut:]] + [decoder.flush()]
    assert primed + "".join(pieces) == whole
    for special in DEFAULT_HIDDEN | {"xxrep", "xxwrep", "xxmaj", "xxup"}:
        assert special not in whole


def test_stream_emits_word_by_word() -> None:
    decoder = StreamDecoder()
    pieces = [decoder.push(t) for t in ["xxbos", "xxmaj", "it", "was", "n't", "good", "."]]
    assert pieces == ["", "", "It", " was", "n't", " good", "."]
    assert decoder.flush() == ""


def test_stream_holds_possible_br_remnant_until_resolved() -> None:
    decoder = StreamDecoder()
    assert [decoder.push(t) for t in ["a", "<", "br"]] == ["A", "", ""]
    assert decoder.push("x") == " < br x"
    assert decoder.push("<") == ""
    assert decoder.flush() == " <"


@pytest.mark.parametrize(
    "text",
    [
        "I didn't like it, but it's fine.",
        "The movie (2005) was GREAT! Really.",
        'He said "wow" and left.',
        "Ten out of 10 - no, 11/10!",
        "We're gonna watch it again; can't wait...",
    ],
)
def test_decode_inverts_tokenize_on_plain_text(tok: Tokenizer, text: str) -> None:
    expected = text.replace("...", "…").replace(" - ", "-")
    assert tok.decode(tok.tokenize(text)) == expected
