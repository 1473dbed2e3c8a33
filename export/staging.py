"""Bundles are published whole or not at all: built in a hidden staging folder beside their
final place, renamed into place only when every check passed, removed when one failed.

Why one helper: export, ensemble and calibrate all write bundles, and a half-written bundle that
a server could load is the failure the brief forbids ("refused loudly, nothing written")."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_bundle(out_dir: Path, name: str) -> Iterator[Path]:
    """Yield an empty `out_dir/.NAME.staging`; on success it replaces `out_dir/NAME`. On any
    exception it is removed, and so is `out_dir` if this call created it (nothing else there)."""
    created = not out_dir.exists()
    staging = out_dir / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    final = out_dir / name
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
