"""Failures of model work, as plain exceptions: the inference wing knows nothing of HTTP.

`server.http.errors` maps each of them to a status code and a JSON body, in one place.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every failure the inference wing reports to a caller."""


class DeadlineExceeded(InferenceError):
    """The request's work ran past REQUEST_TIMEOUT_S and was stopped."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"The request did not finish within {timeout_s:g} s")
        self.timeout_s = timeout_s


class BatchFailed(InferenceError):
    """A shared (micro-batched) onnxruntime call failed; each request of it gets its own copy."""


class UnknownModel(InferenceError):
    """No loaded bundle has this name (or this version)."""

    def __init__(self, name: str, version: str | None = None, task: str | None = None) -> None:
        what = f"model '{name}'" + (f" version '{version}'" if version is not None else "")
        if task is not None:
            what = f"'{task}' {what}"
        super().__init__(f"This server has no {what}.")
        self.name, self.version, self.task = name, version, task


class NoModelForTask(InferenceError):
    """MODEL_DIR has no bundle for the endpoint's task."""

    def __init__(self, task: str) -> None:
        super().__init__(f"This server has no '{task}' model loaded.")
        self.task = task
