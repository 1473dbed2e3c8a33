"""Soft labels: a teacher's probabilities on every review of a pre-tokenized corpus, the targets
of `python -m training distill` (training/distill.py), as one small file.

`probabilities` are float16 (2 bytes per review and label, corpus order: train rows, then unsup)
and `meta` records the labels, the teacher and a digest of the corpus (ids, offsets, vocab), so a
distill run given another corpus refuses the file. Reading it needs numpy only: a lent GPU
machine has neither onnxruntime nor the teacher; training/teacher.py makes the file here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import TokenizedCorpus

FORMAT = "soft-labels/1"


class SoftLabelError(ValueError):
    """A teacher, corpus or soft-label file that does not belong with the others."""


def corpus_digest(corpus: TokenizedCorpus) -> str:
    """sha256 of what the teacher and the student read: ids, document offsets and vocab."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(corpus.ids, dtype=np.uint16).tobytes())
    h.update(np.ascontiguousarray(corpus.offsets, dtype=np.int64).tobytes())
    h.update("\n".join(corpus.vocab).encode("utf-8"))
    return h.hexdigest()


@dataclass
class SoftLabels:
    probabilities: np.ndarray  # float16, (documents, labels), corpus order: train, then unsup
    meta: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    def save(self, path: Path) -> None:
        """Written whole to a temporary name, then renamed: a reader never sees half a file."""
        buffer = io.BytesIO()
        np.savez(buffer, probabilities=self.probabilities, meta=np.array(json.dumps(self.meta)))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SoftLabels:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                probabilities = z["probabilities"]
        except (OSError, KeyError, ValueError) as e:
            raise SoftLabelError(f"{path}: not a soft-label file ({e})") from None
        if meta.get("format") != FORMAT:
            raise SoftLabelError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        return cls(probabilities, meta)

    def check_corpus(self, corpus: TokenizedCorpus, where: Path) -> None:
        """Refuse soft labels computed on another corpus (other reviews, ids or vocab)."""
        digest = corpus_digest(corpus)
        if (
            digest != self.meta["corpus"]["sha256"]
            or len(self.probabilities) != len(corpus.offsets) - 1
        ):
            raise SoftLabelError(
                f"{where} was computed on another corpus (sha256 {self.meta['corpus']['sha256'][:12]}"
                f"..., {len(self.probabilities)} reviews) than this one ({digest[:12]}..., "
                f"{len(corpus.offsets) - 1} reviews): recompute it with python -m training "
                "soft-labels on this corpus"
            )
