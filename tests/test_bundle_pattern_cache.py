"""bundle.pattern_cache: saved compiled regexes are exactly what `re.compile` makes, and a bad
or foreign cache file only means compiling again. Also: one Tokenizer per tokenizer.json content.

The patterns are the shipped bundle's real spaCy tables (large Unicode classes, lookaheads,
named and numbered groups), compared with `==`, which for compiled patterns compares the
engine's code, flags and pattern text.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from bundle import pattern_cache
from bundle.pattern_cache import cache_path, compile_patterns
from bundle.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "models" / "imdb-sentiment" / "tokenizer.json"
# Group names and numbers, flags and an ignore-case class: parts the saved form must carry.
EXTRA = [
    (r"(?P<word>\w+)-(\d+)", 0),
    (r"[À-ÿ]+x", int(re.IGNORECASE)),
    (r"^\s*(?:a|b)$", int(re.MULTILINE)),
]


@pytest.fixture
def specs() -> list[tuple[str, int]]:
    spacy = json.loads(TABLES.read_text(encoding="utf-8"))["spacy"]
    found = [
        (spacy[k]["pattern"], spacy[k].get("flags", 0) & ~re.UNICODE)
        for k in ("prefix", "suffix", "infix", "token_match", "url_match")
        if spacy.get(k)
    ]
    assert len(found) >= 3
    return found + EXTRA


@pytest.fixture
def prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Cache files go under a fresh PYTHONPYCACHEPREFIX-like folder, not the repository."""
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path))
    return tmp_path


def _plain(specs: list[tuple[str, int]]) -> list[re.Pattern[str]]:
    return [re.compile(pattern, flags) for pattern, flags in specs]


def test_saved_patterns_equal_re_compile(specs, prefix: Path) -> None:
    path = cache_path(specs)
    assert str(path).startswith(str(prefix)) and not path.exists()
    first = compile_patterns(specs)
    assert path.is_file(), "the first compile saves the compiled form"
    second = compile_patterns(specs)  # from the file
    assert second == _plain(specs) == first
    for built, plain in zip(second, _plain(specs), strict=True):
        assert built.groupindex == plain.groupindex and built.groups == plain.groups
    text = "Mr. (Smith)'s e-mail: http://x.org/a?b=1 -- won't 12-34 Àéx"
    for built, plain in zip(second, _plain(specs), strict=True):
        assert [m.span() for m in built.finditer(text)] == [m.span() for m in plain.finditer(text)]


def test_the_file_is_read_not_recompiled(specs, prefix: Path, monkeypatch) -> None:
    expected = _plain(specs)
    compile_patterns(specs)

    def refuse(*args: object) -> None:
        raise AssertionError(f"compiled again: {args!r:.60}")

    monkeypatch.setattr(pattern_cache.re, "compile", refuse)
    assert compile_patterns(specs) == expected


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not marshal"),
        lambda path: path.write_bytes(path.read_bytes()[:1000]),
        lambda path: path.write_bytes(b""),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_damaged_file_means_compiling(specs, prefix: Path, damage) -> None:
    compile_patterns(specs)
    damage(cache_path(specs))
    assert compile_patterns(specs) == _plain(specs)


def test_a_file_for_other_patterns_is_not_used(specs, prefix: Path) -> None:
    """Same file name, other patterns inside (a hash collision or a copied file): ignored."""
    other = [(r"zz+", 0)]
    compile_patterns(other)
    shutil.copy(cache_path(other), cache_path(specs))
    assert compile_patterns(specs) == _plain(specs)


def test_unwritable_folder_still_compiles(specs, prefix: Path) -> None:
    (prefix / "blocker").write_text("a file where a folder would go", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "pycache_prefix", str(prefix / "blocker"))
        assert compile_patterns(specs) == _plain(specs)


def test_tokenizer_same_tokens_cold_and_from_cache(prefix: Path) -> None:
    """A tokenizer whose patterns come from the saved file tokenizes as a freshly compiled one."""
    tables = json.loads(TABLES.read_text(encoding="utf-8"))
    texts = [
        "I didn't like it :) -- the e-mail was a@b.com, see http://imdb.com/title?x=1 (1999).",
        "OMG!!! Sooooo baaaad... <br /><br />10/10 would NOT watch again; U.S.A. & co.",
    ]
    from bundle import tokenizer as module

    module._SHARED.clear()  # an earlier test may have built these tables already in this process
    cold = Tokenizer.from_dict(tables)
    assert any(prefix.rglob("regex-*")), "building the tokenizer saved its patterns"
    module._SHARED.clear()  # rebuild the spaCy layer, now from the file
    warm = Tokenizer.from_dict(tables)
    assert warm._spacy is not cold._spacy
    for text in texts:
        assert warm.encode(text) == cold.encode(text)


def test_from_file_shares_one_tokenizer_per_content(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    shutil.copy(TABLES, a)
    shutil.copy(TABLES, b)
    tables = json.loads(TABLES.read_text(encoding="utf-8"))
    tables["vocab"][-1] = "zzzunseen"
    c.write_text(json.dumps(tables), encoding="utf-8")
    assert Tokenizer.from_file(a) is Tokenizer.from_file(b)
    other = Tokenizer.from_file(c)
    assert other is not Tokenizer.from_file(a)
    assert other.vocab[-1] == "zzzunseen" and Tokenizer.from_file(a).vocab[-1] != "zzzunseen"
