"""fastai's ULMFiT tokenizer (default rules + spaCy's blank English tokenizer) without spaCy.

The server must turn text into exactly the ids the model was trained on, but may not import
spaCy, fastai or torch. `export/tokenizer_tables.py` captures everything that defines the
tokenization as data (tokenizer.json); this module replays it with stdlib `re`:

1. fastai's pre-rules on the raw string (fix_html ... lowercase, which adds ``xxbos``);
2. spaCy's tokenizer algorithm (whitespace split, special cases, prefix/suffix/infix search,
   token_match/url_match, then the final pass that re-applies special cases containing affixes);
3. fastai's post-rule (``replace_space``: spaces inside tokens become ``▁``), as `tokenize_df`
   does for the training data.

It also decodes ids back into readable text, in one go (`Tokenizer.decode`) or one token at a
time for streaming (`StreamDecoder`), both with the same rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .pattern_cache import compile_patterns

FORMAT = "fastai-spacy-tokenizer"
SCHEMA_VERSION = 1

_RUNS = re.compile(r"\s+|\S+")  # alternating whitespace / non-whitespace runs, like spaCy's scan
_MAX_CHUNK_CACHE = 50_000  # distinct chunks kept (~10 MB at most); cleared when full


class TokenizerError(ValueError):
    """tokenizer.json is malformed, of another format, or asks for a rule we cannot replay."""


def _compile(spec: dict[str, Any] | None) -> re.Pattern[str] | None:
    if spec is None:
        return None
    return re.compile(spec["pattern"], spec.get("flags", 0) & ~re.UNICODE)


def _compile_tables(specs: Sequence[dict[str, Any] | None]) -> list[re.Pattern[str] | None]:
    """`_compile` of each spec, the large spaCy patterns from their saved compiled form
    (bundle/pattern_cache.py) when this interpreter has one."""
    present = [
        (spec["pattern"], spec.get("flags", 0) & ~re.UNICODE) for spec in specs if spec is not None
    ]
    compiled = iter(compile_patterns(present))
    return [next(compiled) if spec is not None else None for spec in specs]


# --------------------------------------------------------------------------- fastai's text rules
def _build_rules(rule_specs: Sequence[dict[str, Any]]) -> list[Callable[[str], str]]:
    """Turn the exported rule list into functions, in order. Unknown rules are an error, not a skip."""
    rules: list[Callable[[str], str]] = []
    for spec in rule_specs:
        builder = _RULE_BUILDERS.get(spec.get("name", ""))
        if builder is None:
            raise TokenizerError(
                f"tokenizer.json asks for text rule {spec.get('name')!r}, "
                f"which this runtime does not implement"
            )
        rules.append(builder(spec))
    return rules


def _fix_html(spec: dict[str, Any]) -> Callable[[str], str]:
    pairs = [(str(old), str(new)) for old, new in spec["replacements"]]
    if spec.get("html_unescape", True):
        import html  # only when a tokenizer is built: keeps `import bundle.tokenizer` minimal

        unescape: Callable[[str], str] = html.unescape
    else:

        def unescape(text: str) -> str:
            return text

    def fix_html(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return unescape(text)

    return fix_html


def _replace_rep(spec: dict[str, Any]) -> Callable[[str], str]:
    pattern, token = _compile(spec), spec["token"]
    assert pattern is not None

    def one(m: re.Match[str]) -> str:
        return f" {token} {len(m.group(2)) + 1} {m.group(1)} "

    return lambda text: pattern.sub(one, text)


def _replace_wrep(spec: dict[str, Any]) -> Callable[[str], str]:
    pattern, token = _compile(spec), spec["token"]
    assert pattern is not None

    def one(m: re.Match[str]) -> str:
        word, repeats, end = m.groups()
        return f" {token} {len(repeats.split()) + 2} {word} {end}"

    return lambda text: pattern.sub(one, text)


def _substitute(spec: dict[str, Any]) -> Callable[[str], str]:
    pattern, replacement = _compile(spec), spec["replacement"]
    assert pattern is not None
    return lambda text: pattern.sub(replacement, text)


def _mark_case(spec: dict[str, Any]) -> Callable[[str], str]:
    """replace_all_caps / replace_maj: lower-case the word, prefix a marker if it is longer than 1."""
    pattern, token = _compile(spec), spec["token"]
    assert pattern is not None

    def one(m: re.Match[str]) -> str:
        space, word = m.group(1), m.group(2)
        return f"{space}{token + ' ' if len(word) > 1 else ''}{word.lower()}"

    return lambda text: pattern.sub(one, text)


def _lowercase(spec: dict[str, Any]) -> Callable[[str], str]:
    head = f"{spec['bos']} " if spec.get("add_bos", True) else ""
    tail = f" {spec['eos']}" if spec.get("add_eos", False) else ""
    return lambda text: head + text.lower().strip() + tail


_RULE_BUILDERS: dict[str, Callable[[dict[str, Any]], Callable[[str], str]]] = {
    "fix_html": _fix_html,
    "replace_rep": _replace_rep,
    "replace_wrep": _replace_wrep,
    "spec_add_spaces": _substitute,
    "rm_useless_spaces": _substitute,
    "replace_all_caps": _mark_case,
    "replace_maj": _mark_case,
    "lowercase": _lowercase,
}


def _build_post_rules(specs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        if spec.get("name") != "replace_space":
            raise TokenizerError(
                f"tokenizer.json asks for post rule {spec.get('name')!r}, "
                f"which this runtime does not implement"
            )
        out.append((str(spec["old"]), str(spec["new"])))
    return out


# --------------------------------------------------------------------------- spaCy's algorithm
class AffixTokenizer:
    """spaCy's rule-based tokenizer, replayed from its exported tables.

    Written from spaCy's documented algorithm ("Tokenizer algorithm", `Tokenizer.explain`); the
    details the docs leave open (which special cases the final pass re-finds and how it resolves
    overlaps) follow spaCy's observed behaviour, and every path is checked token for token
    against spaCy itself (tests/test_bundle_tokenizer_parity.py).
    """

    def __init__(self, tables: dict[str, Any]) -> None:
        prefix, suffix, infix, token_match, url_match = _compile_tables(
            [tables.get(k) for k in ("prefix", "suffix", "infix", "token_match", "url_match")]
        )
        self._prefix = prefix.search if prefix is not None else None
        self._suffix = suffix.search if suffix is not None else None
        self._infix = infix.finditer if infix is not None else None
        self._token_match = token_match.match if token_match is not None else None
        self._url_match = url_match.match if url_match is not None else None
        self._specials: dict[str, tuple[str, ...]] = {
            str(key): tuple(str(p) for p in pieces)
            for key, pieces in tables["special_cases"].items()
        }
        self._cache: dict[str, tuple[str, ...]] = {}
        self._final_pass = self._final_pass_patterns(bool(tables.get("faster_heuristics", True)))

    # spaCy's find_prefix / find_suffix return a length; a zero-length match counts as none.
    def _prefix_len(self, text: str) -> int:
        m = self._prefix(text) if self._prefix is not None else None
        return m.end() - m.start() if m is not None else 0

    def _suffix_len(self, text: str) -> int:
        m = self._suffix(text) if self._suffix is not None else None
        return m.end() - m.start() if m is not None else 0

    def _infixes(self, text: str) -> list[re.Match[str]]:
        return list(self._infix(text)) if self._infix is not None else []

    def _has_infix(self, text: str) -> bool:
        return self._infix is not None and next(self._infix(text), None) is not None

    def _final_pass_patterns(self, faster_heuristics: bool) -> dict[str, list[tuple[str, ...]]]:
        """Special cases that whole-chunk lookup can miss because affix splitting cuts them up
        (e.g. emoticons): spaCy re-finds them as token sequences after tokenizing the document.
        Indexed by first token."""
        index: dict[str, set[tuple[str, ...]]] = {}
        for key in self._specials:
            if (
                not faster_heuristics
                or self._prefix_len(key)
                or self._suffix_len(key)
                or " " in key
                or self._has_infix(key)
            ):
                pattern = tuple(self._tokenize_chunks(key, with_specials=False)[0])
                index.setdefault(pattern[0], set()).add(pattern)
        return {first: sorted(patterns) for first, patterns in index.items()}

    def _split_affixes(
        self, text: str, prefixes: list[str], suffixes: list[str], with_specials: bool
    ) -> str:
        """Peel prefixes and suffixes off until none is left or a special case / token match
        is reached; what remains is the core of the chunk."""
        specials = self._specials
        last_len = -1
        while text and len(text) != last_len:
            if self._token_match is not None and self._token_match(text):
                break
            if with_specials and text in specials:
                break
            last_len = len(text)
            pre_len = self._prefix_len(text)
            if pre_len:
                prefix, minus_pre = text[:pre_len], text[pre_len:]
                if minus_pre and with_specials and minus_pre in specials:
                    prefixes.append(prefix)
                    return minus_pre
            suf_len = self._suffix_len(text[pre_len:])
            if suf_len:
                suffix, minus_suf = text[-suf_len:], text[:-suf_len]
                if minus_suf and with_specials and minus_suf in specials:
                    suffixes.append(suffix)
                    return minus_suf
            if pre_len and suf_len and pre_len + suf_len <= len(text):
                prefixes.append(prefix)
                suffixes.append(suffix)
                text = text[pre_len:-suf_len]
            elif pre_len:
                prefixes.append(prefix)
                text = minus_pre
            elif suf_len:
                suffixes.append(suffix)
                text = minus_suf
        return text

    def _core_tokens(self, core: str, with_specials: bool) -> list[str]:
        """The core left after affix stripping: special case, token/url match, or infix split."""
        if with_specials and core in self._specials:
            return list(self._specials[core])
        if (self._token_match is not None and self._token_match(core)) or (
            self._url_match is not None and self._url_match(core)
        ):
            return [core]
        matches = self._infixes(core)
        if not matches:
            return [core]
        out: list[str] = []
        start = 0
        for m in matches:
            if m.start() == 0:  # an infix at the very start is not a split point
                continue
            if m.start() != start:
                out.append(core[start : m.start()])
            if m.start() != m.end():
                out.append(core[m.start() : m.end()])
            start = m.end()
        if core[start:]:
            out.append(core[start:])
        return out

    def _chunk(self, chunk: str, with_specials: bool) -> tuple[str, ...]:
        """Tokens of one whitespace-delimited chunk (no cache)."""
        if with_specials and chunk in self._specials:
            return self._specials[chunk]
        prefixes: list[str] = []
        suffixes: list[str] = []
        core = self._split_affixes(chunk, prefixes, suffixes, with_specials)
        pieces = (
            prefixes + (self._core_tokens(core, with_specials) if core else []) + suffixes[::-1]
        )
        return tuple(pieces)

    def _tokenize_chunks(self, text: str, with_specials: bool) -> tuple[list[str], set[int]]:
        """Tokens, and the indices of those followed by a single ' ' (spaCy's `whitespace_`).

        Text is cut into alternating runs of whitespace and non-whitespace. One ' ' after a word
        is that word's trailing space; any other whitespace run (or what is left of it) is a
        token. A chunk's tokens depend on the chunk alone, so they are cached.
        """
        tokens: list[str] = []
        spaced: set[int] = set()
        cache = self._cache if with_specials else {}
        first = True
        for run in _RUNS.findall(text):
            if not first and run[0] == " ":  # runs alternate: a space run here follows a word
                spaced.add(len(tokens) - 1)
                if len(run) == 1:
                    continue
                run = run[1:]
            first = False
            pieces = cache.get(run)
            if pieces is None:
                pieces = self._chunk(run, with_specials)
                if with_specials:
                    if len(cache) >= _MAX_CHUNK_CACHE:
                        cache.clear()
                    cache[run] = pieces
            tokens.extend(pieces)
        return tokens, spaced

    def _apply_final_pass(self, tokens: list[str], spaced: set[int]) -> list[str]:
        """Re-apply special cases found as token sequences: longest first, then leftmost; a
        candidate overlapping an earlier candidate's first or last token is dropped (even when
        that earlier one had no effect). Matches that span a space change nothing."""
        index = self._final_pass
        n = len(tokens)
        found = [
            (i, i + len(pattern))
            for i, token in enumerate(tokens)
            if token in index
            for pattern in index[token]
            if i + len(pattern) <= n and tuple(tokens[i : i + len(pattern)]) == pattern
        ]
        if not found:
            return tokens
        found.sort(key=lambda span: (span[0] - span[1], span[0]))
        seen: set[int] = set()
        accepted: list[tuple[int, int]] = []
        for start, end in found:
            if start not in seen and end - 1 not in seen:
                accepted.append((start, end))
            seen.update(range(start, end))
        out: list[str] = []
        pos = 0
        for start, end in sorted(accepted):
            text = "".join(tokens[k] + (" " if k in spaced else "") for k in range(start, end - 1))
            text += tokens[end - 1]
            replacement = self._specials.get(text)
            out.extend(tokens[pos:start])
            out.extend(replacement if replacement is not None else tokens[start:end])
            pos = end
        out.extend(tokens[pos:])
        return out

    def __call__(self, text: str) -> list[str]:
        tokens, spaced = self._tokenize_chunks(text, with_specials=True)
        return self._apply_final_pass(tokens, spaced) if self._final_pass else tokens


_SHARED: dict[str, AffixTokenizer] = {}


def shared_affix_tokenizer(tables: dict[str, Any]) -> AffixTokenizer:
    """One AffixTokenizer per distinct spaCy table: a server's LM and classifier bundles carry the
    same one, and building it (compiling ~35 kB of regex) is most of a tokenizer's load time."""
    key = json.dumps(tables, sort_keys=True, ensure_ascii=False)
    found = _SHARED.get(key)
    if found is None:
        found = _SHARED[key] = AffixTokenizer(tables)
    return found


# --------------------------------------------------------------------------- the public tokenizer
class Tokenizer:
    """Text <-> ids for one bundle, exactly as fastai tokenized and numericalized its training data."""

    def __init__(self, tables: dict[str, Any]) -> None:
        if tables.get("format") != FORMAT:
            raise TokenizerError(f"not a {FORMAT} table (format={tables.get('format')!r})")
        if tables.get("schema_version") != SCHEMA_VERSION:
            raise TokenizerError(
                f"tokenizer.json schema_version {tables.get('schema_version')!r}; "
                f"this runtime reads {SCHEMA_VERSION}"
            )
        try:
            self.vocab: list[str] = [str(t) for t in tables["vocab"]]
            self.special_tokens: dict[str, str] = dict(tables["special_tokens"])
            self.unk_id: int = int(tables["unk_id"])
            self.pad_id: int = int(tables["pad_id"])
            self.bos_id: int = int(tables["bos_id"])
            self.fake_token: str = str(tables.get("fake_token", "xxfake"))
            self._rules = _build_rules(tables["text_rules"])
            self._post_rules = _build_post_rules(tables.get("post_rules", []))
            self._spacy = shared_affix_tokenizer(tables["spacy"])
        except TokenizerError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
            raise TokenizerError(f"malformed tokenizer.json: {exc!r}") from exc
        self.vocab_size: int = len(self.vocab)
        for name, idx in (
            ("unk_id", self.unk_id),
            ("pad_id", self.pad_id),
            ("bos_id", self.bos_id),
        ):
            if not 0 <= idx < self.vocab_size:
                raise TokenizerError(f"{name}={idx} outside the vocab of {self.vocab_size}")
        # fastai's Numericalize: later duplicates win, padding entries are not words, misses -> unk.
        self._ids = {token: i for i, token in enumerate(self.vocab) if token != self.fake_token}
        self._hidden = frozenset(self.special_tokens.values()) | {self.fake_token}

    @classmethod
    def from_dict(cls, tables: dict[str, Any]) -> Tokenizer:
        return cls(tables)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """One Tokenizer per distinct file content: a server's LM and classifier bundles carry
        the same tokenizer.json, and a Tokenizer never changes once built."""
        raw = Path(path).read_bytes()
        key = (cls, hashlib.sha256(raw).hexdigest())
        found = _LOADED.get(key)
        if found is None:
            try:
                tables = json.loads(raw)
            except ValueError as exc:
                raise TokenizerError(f"{path}: not JSON ({exc})") from exc
            found = _LOADED[key] = cls(tables)
        return found

    def apply_rules(self, text: str) -> str:
        """fastai's pre-rules: the string spaCy sees."""
        for rule in self._rules:
            text = rule(text)
        return text

    def tokenize(self, text: str, apply_post_rules: bool = True) -> list[str]:
        """Tokens of one document, starting with xxbos. With `apply_post_rules` (the default) they
        are those of fastai's training pipeline (`tokenize_df`); without, those of
        `fastai.text.core.Tokenizer(...)(text)`, which skips `replace_space`."""
        tokens = self._spacy(self.apply_rules(str(text)))
        if apply_post_rules:
            for old, new in self._post_rules:
                tokens = [t.replace(old, new) if old in t else t for t in tokens]
        return tokens

    def tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        ids, unk = self._ids, self.unk_id
        return [ids.get(t, unk) for t in tokens]

    def ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        vocab, size = self.vocab, self.vocab_size
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < size:
                raise ValueError(f"token id {i} outside the vocab of {size}")
            out.append(vocab[i])
        return out

    def encode(self, text: str) -> list[int]:
        return self.tokens_to_ids(self.tokenize(text))

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids_or_tokens: Iterable[int | str]) -> str:
        """Readable text (see `StreamDecoder`) from ids or token strings."""
        tokens = [t if isinstance(t, str) else self.ids_to_tokens((t,))[0] for t in ids_or_tokens]
        return decode_tokens(tokens, hidden=self._hidden)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(hidden=self._hidden)


_LOADED: dict[tuple[type[Tokenizer], str], Tokenizer] = {}  # (class, sha256 of the file) -> it


# --------------------------------------------------------------------------- decoding
DEFAULT_HIDDEN = frozenset({"xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxfake"})
_REP, _WREP, _UP, _MAJ = "xxrep", "xxwrep", "xxup", "xxmaj"
_MAX_REPEAT = 64  # a generated "xxrep 100000 a" must not blow up the response

_SENTENCE_PUNCT = frozenset(".,!?;:…")  # runs of these attach to the word before
_SENTENCE_END = frozenset(".!?")  # runs of these end a sentence
_CLOSERS = frozenset({")", "]", "}", "»", "”", "’", "%"})
_OPENERS = frozenset({"(", "[", "{", "“", "«", "‘", "$", "#", "¿", "¡", "£", "€", "¥"})
_JOINERS = frozenset({"-", "/", "\\", "@", "_"})  # glued on both sides ("e - mail", "a / b")
_QUOTES = frozenset({'"', "'", "`", "``", "''"})  # open / close alternately
_CLITIC = re.compile(r"^(?:n['’]t|['’](?:s|m|d|ll|ve|re))$")
_JOIN_AFTER_WORD = frozenset({"nt", "ve", "ll"})  # apostrophe-less contractions: "do nt" -> "dont"
_JOIN_PAIRS = frozenset({("gon", "na"), ("got", "ta"), ("wan", "na"), ("i", "m")})
# After "xxrep n c" with a letter c, the next token may be the rest of the same word ("b xxrep 4
# a d" from "baaaad") or the next word ("s xxrep 5 o bad" from "sooooo bad"); fastai's rules
# erase the difference. Short alphabetic fragments that are not words of their own are glued.
_STANDALONE_SHORT = frozenset(
    {
        "a",
        "i",
        "an",
        "am",
        "as",
        "at",
        "be",
        "by",
        "do",
        "go",
        "he",
        "if",
        "in",
        "is",
        "it",
        "me",
        "my",
        "no",
        "of",
        "oh",
        "ok",
        "on",
        "or",
        "so",
        "to",
        "up",
        "us",
        "we",
    }
)
_FRAGMENT = re.compile(r"^[^\W\d_]{1,2}[.,!?;:]*$")


class StreamDecoder:
    """Turns tokens into readable text one token at a time: `push(token)` returns the text to
    emit now (often ""), `flush()` whatever is still held at the end.

    ``decode(tokens) == "".join(push(t) for t in tokens) + flush()`` by construction, so a
    stream and a final decode agree. Prime it with the prompt's tokens (discarding what they
    return) and the first generated word gets the right spacing and capitalisation.

    Rules: xxmaj / xxup capitalise / upper-case the next word (and its clitics); ``xxrep n c``
    and ``xxwrep n w`` are expanded; special tokens are never shown; no space before sentence
    punctuation, closing brackets and clitics ("did n't" -> "didn't"), none after opening
    brackets; quotes alternate opening / closing; newline tokens become newlines and
    ``< br / >`` remnants a newline; a sentence (and the pronoun "i") starts with a capital.
    """

    def __init__(self, hidden: Iterable[str] = DEFAULT_HIDDEN) -> None:
        self._hidden = frozenset(hidden) - {_REP, _WREP, _UP, _MAJ}
        self._case: str | None = None  # pending "maj" / "up" for the next word
        self._word_case: str | None = None  # case of the word that clitics continue
        self._rep: list[str] | None = None  # collecting ["xxrep" | "xxwrep", count?]
        self._held: list[str] = []  # a possible "< br / >" sequence
        self._prev = ""  # last token emitted (raw), "" after a newline
        self._last_char = ""  # last character emitted
        self._digit_before_prev = False  # the char before the last piece was a digit
        self._no_space_next = True  # at the start, after an opener or a newline
        self._sentence_start = True
        self._after_letter_rep = False  # the last piece was "xxrep n <letter>"
        self._open_quotes: dict[str, bool] = {}

    def push(self, token: str) -> str:
        if self._held or token == "<":
            self._held.append(token)
            return self._resolve_held()
        return self._process(token)

    def flush(self) -> str:
        held, self._held = self._held, []
        out = "".join(self._process(t) for t in held)
        self._rep, self._case = None, None
        return out

    # -- "< br / >" remnants (fix_html only rewrites the exact "<br />")
    def _resolve_held(self) -> str:
        held = self._held
        expected = (("<",), ("br",), ("/", ">"), (">",))
        prefix_ok = all(tok in expected[i] for i, tok in enumerate(held[:4]))
        if prefix_ok and held[-1] == ">":
            self._held = []
            return self._emit("\n", kind="newline")
        if prefix_ok and len(held) < 4:
            return ""
        self._held = []
        out = self._process(held[0])
        for token in held[1:]:
            out += self.push(token)
        return out

    def _process(self, token: str) -> str:
        if self._rep is not None:
            return self._continue_rep(token)
        if token in (_REP, _WREP):
            self._rep = [token]
            return ""
        if token == _MAJ:
            self._case = self._case or "maj"
            return ""
        if token == _UP:
            self._case = "up"
            return ""
        if token in self._hidden:
            return ""
        return self._token(token)

    def _continue_rep(self, token: str) -> str:
        rep = self._rep
        assert rep is not None
        if len(rep) == 1:
            if token.isdigit():
                rep.append(token)
                return ""
            self._rep = None  # a marker without its count: drop it
            return self._process(token)
        if token in (_MAJ, _UP):
            self._case = "up" if token == _UP else (self._case or "maj")
            return ""
        self._rep = None
        if (
            token in self._hidden
            or token in (_REP, _WREP)
            or token.replace("\u2581", " ").isspace()
        ):
            return self._process(token)
        count = max(1, min(int(rep[1]), _MAX_REPEAT))
        if rep[0] == _WREP:
            case, out = self._case, ""
            for _ in range(count):
                self._case = case
                out += self._token(token)
            return out
        return self._repeat_char(token, count)

    def _repeat_char(self, token: str, count: int) -> str:
        first = token[:1]
        if first.isalnum():
            glue = self._last_char.isalnum() or (
                first.isdigit() and self._prev in (",", ".") and self._digit_before_prev
            )
            out = self._emit(self._cased(token * count), kind="word", glue=glue, raw=token)
            self._after_letter_rep = first.isalpha()
            return out
        kind, glue = self._classify(token)
        return self._emit(token * count, kind=kind, glue=glue, raw=token)

    def _cased(self, text: str, sentence_start_ok: bool = True) -> str:
        case, self._case = self._case, None
        self._word_case = case
        if case == "up":
            return text.upper()
        if case == "maj" or (sentence_start_ok and self._sentence_start):
            return text[:1].upper() + text[1:]
        return text

    def _classify(self, token: str) -> tuple[str, bool]:
        """(kind, glue-to-previous) of a punctuation-like token."""
        if token in _OPENERS:
            return "opener", False
        if token in _JOINERS:
            return "opener", True
        if token in _CLOSERS or all(c in _SENTENCE_PUNCT for c in token):
            return "punct", True
        return "word", False

    def _token(self, token: str) -> str:
        raw = token.replace("\u2581", " ")
        if raw.isspace():
            if "\n" in raw or "\r" in raw or "\u2028" in raw:
                return self._emit("\n" * max(raw.count("\n"), 1), kind="newline")
            if "\x85" in raw:  # IMDB's cp1252 ellipsis, decoded as U+0085 (a space to Python)
                return self._emit("…", kind="punct", glue=True, raw="…")
            return ""  # stray spaces / tabs: ordinary spacing already separates words
        prev = self._prev
        after_word = prev[-1:].isalnum()
        if _CLITIC.match(token) or (
            after_word and (token in _JOIN_AFTER_WORD or (prev, token) in _JOIN_PAIRS)
        ):
            case = self._case or self._word_case
            self._case = None
            return self._emit(
                token.upper() if case == "up" else token, kind="word", glue=True, raw=token
            )
        if (
            self._after_letter_rep
            and _FRAGMENT.match(token)
            and token.rstrip(".,!?;:") not in _STANDALONE_SHORT
        ):
            self._case = None
            return self._emit(token, kind="word", glue=True, raw=token)
        if token in _QUOTES:
            opening = not self._open_quotes.get(token, False)
            self._open_quotes[token] = opening
            return self._emit(
                token, kind="opener" if opening else "punct", glue=not opening, raw=token
            )
        kind, glue = self._classify(token)
        if kind == "word":
            if token == "i":  # fastai cannot mark a one-letter capital; the pronoun always is one
                self._word_case, self._case = self._case, None
                return self._emit("I", kind=kind, glue=glue, raw=token)
            return self._emit(self._cased(token), kind=kind, glue=glue, raw=token)
        return self._emit(
            self._cased(token, sentence_start_ok=False), kind=kind, glue=glue, raw=token
        )

    def _emit(self, text: str, kind: str, glue: bool = False, raw: str = "") -> str:
        space = not (glue or self._no_space_next or kind == "newline")
        out = (" " if space else "") + text
        self._digit_before_prev = self._last_char.isdigit()
        self._no_space_next = kind in ("opener", "newline")
        self._after_letter_rep = False
        self._prev = "" if kind == "newline" else (raw or text)
        self._last_char = out[-1:]
        if kind == "newline" or (kind == "punct" and all(c in _SENTENCE_END for c in text)):
            self._sentence_start = True
        elif any(c.isalnum() for c in text):
            self._sentence_start = False
        return out


def decode_tokens(tokens: Iterable[str], hidden: Iterable[str] = DEFAULT_HIDDEN) -> str:
    """Readable text from tokens: one StreamDecoder run over them."""
    decoder = StreamDecoder(hidden=hidden)
    return "".join(decoder.push(t) for t in tokens) + decoder.flush()
