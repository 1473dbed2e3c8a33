"""One onnxruntime call without the Python-side checks, for graphs run many times a request."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import onnxruntime as ort


def unchecked_run(session: ort.InferenceSession) -> Callable[..., list[np.ndarray]]:
    """`session.run` without its Python-side checks, for calls made many times a request.

    Why: `InferenceSession.run` first walks every graph input in Python (name and type through
    the bindings) and every fed value, which onnxruntime's C++ `run` checks again anyway (a
    missing or mistyped input still raises). Right after an LM step, whose weights have pushed
    the interpreter out of the caches, that walk cost about 1.7 ms of a 5 x 40 /generate (two
    runs a step; measured in the commit that made this change). Call it as
    `run(output_names, feed, run_options)`; where the private binding is missing (another
    onnxruntime build) it is `session.run` itself."""
    binding = getattr(session, "_sess", None)
    run = getattr(binding, "run", None)
    if callable(run):
        return cast(Callable[..., list[np.ndarray]], run)
    return cast(Callable[..., list[np.ndarray]], session.run)
