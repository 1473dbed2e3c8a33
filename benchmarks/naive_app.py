"""The baseline: serving the fastai learners the 2019 way, to measure the product against.

A small Falcon app that `load_learner`s the exported learners at import and calls
`learn.predict` per request, served by gunicorn with one sync worker:

    NAIVE_RUN_DIR=runs/compact gunicorn --workers 1 benchmarks.naive_app:app

It is deliberately the straightforward way, not a straw man: progress bars are off (they would
write to the console on every call), torch runs with the thread count the benchmark pins, and
several samples are several `predict` calls, because that is what `LMLearner.predict` offers.
Benchmarks only; never part of the product runtime (it imports torch and fastai and unpickles).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.procfs import seconds_since_exec

_started = time.perf_counter()
_master_age_at_import = seconds_since_exec(os.getppid())  # gunicorn start + fork of this worker

import falcon  # noqa: E402  (timed: the imports are part of this server's cold start)
import torch  # noqa: E402
from fastai.text.all import load_learner  # noqa: E402

_imported = time.perf_counter()

RUN_DIR = Path(os.environ.get("NAIVE_RUN_DIR", "runs/compact"))
MAX_N_SAMPLES = 10
MAX_N_WORDS = 200

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
classifier = load_learner(RUN_DIR / "classifier.pkl")
language_model = load_learner(RUN_DIR / "lm.pkl")
labels: list[str] = [str(label) for label in classifier.dls.vocab[1]]

# One line for the benchmark's cold-start phases; the exec'd process is gunicorn's master.
print(
    json.dumps(
        {
            "message": "naive app loaded",
            "pid": os.getpid(),
            "app_import_since_exec_s": _master_age_at_import,
            "imports_s": round(_imported - _started, 3),
            "load_s": round(time.perf_counter() - _imported, 3),
            "since_exec_s": seconds_since_exec(os.getppid()),
        }
    ),
    file=sys.stderr,
    flush=True,
)


def _field(body: Any, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """The 2019 app validated little; this much keeps a bad benchmark request from a 500."""
    if not isinstance(body, dict) or (default is None and name not in body):
        raise falcon.HTTPBadRequest(description=f"'{name}' is required")
    value = body.get(name, default)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise falcon.HTTPBadRequest(description=f"'{name}' has the wrong type")
    return value


class Classify:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        text = _field(req.get_media(), "text", (str,))
        with classifier.no_bar():
            label, _, probabilities = classifier.predict(text)
        resp.media = {
            "label": str(label),
            "probabilities": {
                name: float(p) for name, p in zip(labels, probabilities, strict=False)
            },
        }


class Generate:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        prompt = _field(body, "prompt", (str,))
        n_words = _field(body, "n_words", (int,), 40)
        n_samples = _field(body, "n_samples", (int,), 1)
        temperature = float(_field(body, "temperature", (int, float), 1.0))
        if not (1 <= n_words <= MAX_N_WORDS and 1 <= n_samples <= MAX_N_SAMPLES):
            raise falcon.HTTPBadRequest(description="n_words or n_samples out of range")
        if body.get("seed") is not None:
            torch.manual_seed(_field(body, "seed", (int,)))
        samples = [
            language_model.predict(prompt, n_words, temperature=temperature, no_bar=True)
            for _ in range(n_samples)
        ]
        resp.media = {"samples": samples}


class Ready:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ready"}  # the learners load at import: serving means ready


app = falcon.App()
app.add_route("/classify", Classify())
app.add_route("/generate", Generate())
app.add_route("/readyz", Ready())
