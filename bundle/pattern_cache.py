"""Compiled regular expressions kept across processes, the way bytecode is.

Why: a tokenizer's spaCy tables hold ~35 kB of regex with large Unicode classes, and
`re.compile` spends ~40 ms of a server's cold start on them (CPython optimises each class in
Python). What the compiler produces (the engine's code list, group counts and names) depends only
on the pattern, the flags and the interpreter, so it is saved once and later processes hand it
straight to the engine (`_sre.compile`, which also checks the code's structure).

The file sits where Python keeps this package's bytecode (bundle/__pycache__, or under
PYTHONPYCACHEPREFIX), named after a hash of the interpreter's version, the engine's MAGIC and
the patterns: another Python or other tables never read it. It is written by the first process
that compiles the patterns and may write there; in the image that is `python -m bundle.verify`
at build time (as root), and the server, which may not write /app, reads it. A missing,
unreadable or inconsistent file only means compiling as usual. Before a file is written, the
saved parts are rebuilt and compared with `re.compile`'s pattern (equal patterns have equal
code), so what is saved is what `re.compile` would have made.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import marshal
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PatternSpec = tuple[str, int]  # (pattern, flags) as given to re.compile
_FORMAT = 1


def _engine() -> Any:
    """CPython's regex engine module and compiler internals, or None on another interpreter."""
    try:
        import _sre

        _compiler = importlib.import_module("re._compiler")
        _parser = importlib.import_module("re._parser")
    except ImportError:
        return None
    needed = (hasattr(_sre, "compile"), hasattr(_compiler, "_code"), hasattr(_parser, "parse"))
    return (_sre, _compiler, _parser) if all(needed) else None


def _plain_specs(specs: Sequence[PatternSpec]) -> list[PatternSpec]:
    """str and int (a RegexFlag's repr and marshal-ability differ from its int's)."""
    return [(str(pattern), int(flags)) for pattern, flags in specs]


def cache_path(specs: Sequence[PatternSpec]) -> Path:
    """Where the compiled form of exactly these patterns lives for this interpreter."""
    specs = _plain_specs(specs)
    engine = _engine()
    magic = getattr(engine[0], "MAGIC", None) if engine else None
    key = repr((_FORMAT, sys.version, magic, sys.maxsize, list(specs))).encode("utf-8")
    digest = hashlib.sha256(key).hexdigest()[:24]
    here = Path(__file__).resolve().parent
    folder = (
        Path(sys.pycache_prefix, *here.parts[1:]) if sys.pycache_prefix else here / "__pycache__"
    )
    return folder / f"regex-{digest}.{sys.implementation.cache_tag}.marshal"


def _parts(pattern: str, flags: int) -> tuple[Any, ...]:
    """What `re._compiler.compile` hands `_sre.compile`, after the pattern itself."""
    _sre, _compiler, _parser = _engine()
    parsed = _parser.parse(pattern, flags)
    code = [int(op) for op in _compiler._code(parsed, flags)]  # plain ints: marshal-able
    groupindex = dict(parsed.state.groupdict)
    indexgroup: list[str | None] = [None] * parsed.state.groups
    for name, index in groupindex.items():
        indexgroup[index] = name
    return (int(flags | parsed.state.flags), code, parsed.state.groups - 1, groupindex, indexgroup)


def _rebuild(pattern: str, parts: Sequence[Any]) -> re.Pattern[str]:
    _sre = _engine()[0]
    final_flags, code, groups, groupindex, indexgroup = parts
    return _sre.compile(pattern, final_flags, list(code), groups, groupindex, tuple(indexgroup))


def _read(path: Path, specs: Sequence[PatternSpec]) -> list[re.Pattern[str]] | None:
    try:
        saved = marshal.loads(path.read_bytes())
        if saved["specs"] != [list(spec) for spec in specs]:
            return None
        return [
            _rebuild(pattern, parts)
            for (pattern, _flags), parts in zip(specs, saved["parts"], strict=True)
        ]
    except Exception:  # any damage at all: compile instead
        return None


def _write(path: Path, specs: Sequence[PatternSpec], compiled: Sequence[re.Pattern[str]]) -> None:
    """Save the parts if they rebuild exactly `compiled`; silently skip when that or the write
    fails (read-only install, another interpreter's internals). The temporary file is made
    first, so a process that may not write there (the server on a read-only /app) does not
    parse every pattern a second time for nothing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            parts = [_parts(pattern, flags) for pattern, flags in specs]
            rebuilt = [_rebuild(pattern, p) for (pattern, _f), p in zip(specs, parts, strict=True)]
            if rebuilt != list(compiled):
                raise ValueError("saved parts do not rebuild re.compile's patterns")
            fh.write(marshal.dumps({"specs": [list(spec) for spec in specs], "parts": parts}))
        os.chmod(tmp, 0o644)  # readable by the serving user, as bytecode is
        os.replace(tmp, path)
    except BaseException as exc:  # a cache, never a reason to fail a load; no temp file left
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(exc, Exception):
            raise


def compile_patterns(specs: Sequence[PatternSpec]) -> list[re.Pattern[str]]:
    """`[re.compile(p, f) for p, f in specs]`, from the saved compiled form when there is one."""
    if not specs:
        return []
    specs = _plain_specs(specs)
    path = cache_path(specs) if _engine() is not None else None
    if path is not None:
        found = _read(path, specs)
        if found is not None:
            return found
    compiled = [re.compile(pattern, flags) for pattern, flags in specs]
    if path is not None:
        _write(path, specs, compiled)
    return compiled
