"""Capture fastai's text rules and spaCy's English tokenizer as plain data (tokenizer.json).

Runs at export time, where fastai and spaCy are installed. The server replays these tables with
`bundle.tokenizer.Tokenizer` (stdlib `re` only), so it never imports spaCy, fastai or torch, and
its tokens match what the model was trained on. Everything is read from the live objects that
fastai configures (not copied from their sources), and checked against them before it is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT = "fastai-spacy-tokenizer"
SCHEMA_VERSION = 1

# The rule names the runtime knows how to replay, in fastai's default order.
EXPECTED_TEXT_RULES = (
    "fix_html",
    "replace_rep",
    "replace_wrep",
    "spec_add_spaces",
    "rm_useless_spaces",
    "replace_all_caps",
    "replace_maj",
    "lowercase",
)
EXPECTED_POST_RULES = ("replace_space",)


def _fix_html_replacements(unk: str) -> list[list[str]]:
    """The literal substitutions fastai's `fix_html` makes before `html.unescape`, in its order.

    They live inside the function body, so they cannot be read as data; `_check_fix_html`
    proves this list reproduces fastai's function on a probe text that exercises each of them.
    """
    return [
        ["#39;", "'"],
        ["amp;", "&"],
        ["#146;", "'"],
        ["nbsp;", " "],
        ["#36;", "$"],
        ["\\n", "\n"],
        ["quot;", "'"],
        ["<br />", "\n"],
        ['\\"', '"'],
        ["<unk>", unk],
        [" @.@ ", "."],
        [" @-@ ", "-"],
        ["...", " …"],
    ]


def _check_fix_html(replacements: list[list[str]], fix_html: Any) -> None:
    import html

    probes = [
        'a&#39;b &amp;c #146;d&nbsp;e #36;5 x\\ny &quot;q&quot; <br /><br />z \\"w\\" <unk> '
        "1 @.@ 5 a @-@ b wait... &lt;i&gt; &eacute; &#8217; nbsp;amp;",
        "<br/>...<br />&amp;amp; quot; #39;#146;",
        "plain text without any entity",
    ]
    for probe in probes:
        ours = probe
        for old, new in replacements:
            ours = ours.replace(old, new)
        if html.unescape(ours) != fix_html(probe):
            raise RuntimeError(
                "fastai's fix_html no longer matches the exported replacement table; "
                "update export/tokenizer_tables.py and bundle/tokenizer.py together"
            )


def _pattern(compiled: re.Pattern[str]) -> dict[str, Any]:
    return {"pattern": compiled.pattern, "flags": int(compiled.flags)}


def _text_rules() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """fastai's default pre-rules and post-rules as data, after checking they are the defaults."""
    import inspect

    from fastai.text import core

    names = tuple(rule.__name__ for rule in core.defaults.text_proc_rules)
    if names != EXPECTED_TEXT_RULES:
        raise RuntimeError(f"fastai's default text rules changed: {names}")
    post_names = tuple(rule.__name__ for rule in core.defaults.text_postproc_rules)
    if post_names != EXPECTED_POST_RULES:
        raise RuntimeError(f"fastai's default post rules changed: {post_names}")
    tokens = {
        "unk": core.UNK,
        "pad": core.PAD,
        "bos": core.BOS,
        "eos": core.EOS,
        "fld": core.FLD,
        "rep": core.TK_REP,
        "wrep": core.TK_WREP,
        "up": core.TK_UP,
        "maj": core.TK_MAJ,
    }
    replacements = _fix_html_replacements(core.UNK)
    _check_fix_html(replacements, core.fix_html)
    lower_params = inspect.signature(core.lowercase).parameters
    rules = [
        {"name": "fix_html", "replacements": replacements, "html_unescape": True},
        {"name": "replace_rep", **_pattern(core._re_rep), "token": core.TK_REP},
        {"name": "replace_wrep", **_pattern(core._re_wrep), "token": core.TK_WREP},
        {"name": "spec_add_spaces", **_pattern(core._re_spec), "replacement": r" \1 "},
        {"name": "rm_useless_spaces", **_pattern(core._re_space), "replacement": " "},
        {"name": "replace_all_caps", **_pattern(core._re_all_caps), "token": core.TK_UP},
        {"name": "replace_maj", **_pattern(core._re_maj), "token": core.TK_MAJ},
        {
            "name": "lowercase",
            "bos": core.BOS,
            "eos": core.EOS,
            "add_bos": bool(lower_params["add_bos"].default),
            "add_eos": bool(lower_params["add_eos"].default),
        },
    ]
    # The two substitutions given as data must be what fastai does.
    if core.spec_add_spaces("a/b#c\\d") != re.sub(core._re_spec, r" \1 ", "a/b#c\\d"):
        raise RuntimeError("fastai's spec_add_spaces changed")
    if core.rm_useless_spaces("a   b  c") != "a b c":
        raise RuntimeError("fastai's rm_useless_spaces changed")
    if core.replace_space("a b") != "a\u2581b":
        raise RuntimeError("fastai's replace_space changed")
    post_rules = [{"name": "replace_space", "old": " ", "new": "\u2581"}]
    return rules, post_rules, tokens


def _orth(substrings: Sequence[dict[Any, Any]]) -> list[str]:
    from spacy.symbols import ORTH

    return [str(sub.get(ORTH, sub.get("ORTH"))) for sub in substrings]


def _search_pattern(func: Any, kind: str) -> dict[str, Any] | None:
    """spaCy stores its affix rules as bound methods of compiled `re` patterns; keep the pattern."""
    if func is None:
        return None
    owner = getattr(func, "__self__", None)
    if not isinstance(owner, re.Pattern):
        raise RuntimeError(f"spaCy's {kind} is {func!r}, not a method of a compiled `re` pattern")
    return {**_pattern(owner), "method": func.__name__}


def _spacy_tables() -> dict[str, Any]:
    """The blank-English tokenizer exactly as fastai's `SpacyTokenizer` configures it."""
    import spacy
    from fastai.text.core import SpacyTokenizer

    fastai_tok = SpacyTokenizer(lang="en")
    nlp = fastai_tok.pipe.__self__  # SpacyTokenizer keeps only `nlp.pipe`; its owner is the nlp
    tok = nlp.tokenizer
    return {
        "version": spacy.__version__,
        "lang": nlp.lang,
        "prefix": _search_pattern(tok.prefix_search, "prefix_search"),
        "suffix": _search_pattern(tok.suffix_search, "suffix_search"),
        "infix": _search_pattern(tok.infix_finditer, "infix_finditer"),
        "token_match": _search_pattern(tok.token_match, "token_match"),
        "url_match": _search_pattern(tok.url_match, "url_match"),
        "faster_heuristics": bool(tok.faster_heuristics),
        "special_cases": {key: _orth(subs) for key, subs in sorted(tok.rules.items())},
    }


def _special_ids(vocab: Sequence[str], tokens: dict[str, str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for token in tokens.values():
        if token in vocab:
            ids[token] = vocab.index(token)
    for required in (tokens["unk"], tokens["pad"], tokens["bos"]):
        if required not in ids:
            raise ValueError(f"vocab lacks the special token {required!r}")
    return ids


def build_tokenizer_tables(vocab: Sequence[str]) -> dict[str, Any]:
    """Everything `bundle.tokenizer.Tokenizer` needs, as a JSON-serialisable dict."""
    import fastai

    vocab = [str(v) for v in vocab]
    rules, post_rules, tokens = _text_rules()
    spacy_tables = _spacy_tables()
    special_ids = _special_ids(vocab, tokens)
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "vocab": vocab,
        "special_tokens": tokens,
        "special_ids": special_ids,
        "unk_id": special_ids[tokens["unk"]],
        "pad_id": special_ids[tokens["pad"]],
        "bos_id": special_ids[tokens["bos"]],
        "fake_token": "xxfake",
        "text_rules": rules,
        "post_rules": post_rules,
        "spacy": spacy_tables,
        "sources": {"fastai": fastai.__version__, "spacy": spacy_tables["version"]},
    }


def tables_to_json(tables: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (it is parsed at every server start)."""
    text = json.dumps(tables, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in the vocab: fall back to \u escapes
        return json.dumps(tables, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def write_tokenizer_json(vocab: Sequence[str], path: str | Path) -> None:
    """Write tokenizer.json for `vocab` (fastai's Numericalize order, xxfake padding included)."""
    Path(path).write_bytes(tables_to_json(build_tokenizer_tables(vocab)))


def fastai_reference_tokens(texts: Sequence[str]) -> list[list[str]]:
    """What fastai's training pipeline (`tokenize_df` -> TokenizeWithRules) makes of each text."""
    from fastai.text.core import SpacyTokenizer, TokenizeWithRules

    return [list(doc) for doc in TokenizeWithRules(SpacyTokenizer(lang="en"))(list(texts))]


def parity_mismatches(tables: dict[str, Any], texts: Sequence[str]) -> list[dict[str, Any]]:
    """Documents where the exported tokenizer disagrees with fastai (empty list = parity).

    Export calls this on its check texts before it writes a bundle (pipeline._check_tokenizer).
    """
    from bundle.tokenizer import Tokenizer

    ours = Tokenizer.from_dict(tables)
    reference = fastai_reference_tokens(texts)
    return [
        {"index": i, "text": text, "ours": mine, "fastai": theirs}
        for i, (text, theirs) in enumerate(zip(texts, reference, strict=False))
        if (mine := ours.tokenize(text)) != theirs
    ]
