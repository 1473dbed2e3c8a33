"""Short-input calibration: the manifest's optional "short_input" section, read and applied.

A classifier fine-tuned on whole reviews ranks short inputs well but leans to one label on them
(docs/training.md, "Short texts"). For a single-label classifier the section holds a temperature
`scale` and a per-label `log_bias`; an input of at most `max_tokens` tokens (its ids, `xxbos`
included) gets `softmax(scale * log(p) + log_bias)` instead of `p`, so its row still sums to 1.
Longer inputs are untouched. export/short_inputs.py fits it on short texts cut from the training
split; the server applies it in one place (server/inference/classify.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SHORT_INPUT_KEY = "short_input"
MAX_ABS_LOG_BIAS = 20.0  # a shift past e^20 would overrule any model: a corrupt value
SCALE_RANGE = (0.01, 10.0)


@dataclass(frozen=True)
class ShortInputCalibration:
    """What to do with the probabilities of inputs of at most `max_tokens` token ids."""

    max_tokens: int
    scale: float
    log_bias: tuple[float, ...]

    @classmethod
    def parse(cls, section: Any, labels: Sequence[str], multi_label: bool) -> ShortInputCalibration:
        """The manifest's section, checked; ValueError says what is wrong."""
        if multi_label:
            raise ValueError("short_input is for single-label classifiers only")
        if not isinstance(section, dict):
            raise ValueError(f"short_input must be an object, not {section!r}")
        max_tokens: Any = section.get("max_tokens")
        scale: Any = section.get("scale")
        bias: Any = section.get("log_bias")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(
                f"short_input.max_tokens must be a positive integer, not {max_tokens!r}"
            )
        if not _number(scale) or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            raise ValueError(f"short_input.scale must be a number in {SCALE_RANGE}, not {scale!r}")
        if not isinstance(bias, list) or len(bias) != len(labels):
            raise ValueError(f"short_input.log_bias needs one number per label ({len(labels)})")
        if not all(_number(b) and abs(b) <= MAX_ABS_LOG_BIAS for b in bias):
            raise ValueError(f"short_input.log_bias {bias!r}: each within +-{MAX_ABS_LOG_BIAS}")
        return cls(max_tokens, float(scale), tuple(float(b) for b in bias))

    def section(self) -> dict[str, Any]:
        """The manifest keys the reader checks (the writer adds how it was fitted)."""
        return {"max_tokens": self.max_tokens, "scale": self.scale, "log_bias": list(self.log_bias)}

    def applies(self, lengths: Sequence[int] | np.ndarray) -> np.ndarray:
        """Which rows (by token count) are short."""
        return np.asarray(lengths, dtype=np.int64) <= self.max_tokens

    def apply(self, probabilities: np.ndarray, lengths: Sequence[int] | np.ndarray) -> np.ndarray:
        """The probabilities with the short rows recalibrated; a new array, same dtype."""
        rows = self.applies(lengths)
        if not rows.any():
            return probabilities
        out = probabilities.copy()
        out[rows] = self.transform(probabilities[rows]).astype(probabilities.dtype)
        return out

    def transform(self, probabilities: np.ndarray) -> np.ndarray:
        """softmax(scale * log p + log_bias), in float64, for rows regardless of length."""
        tiny = np.finfo(np.float64).tiny
        logits = self.scale * np.log(np.maximum(probabilities.astype(np.float64), tiny))
        logits += np.asarray(self.log_bias)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
        return result


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
