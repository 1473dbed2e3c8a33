"""GET /: the original demo (five continuations of one prompt) and forms for both endpoints.

The five samples cost one batched generation (about a second on one core), so they are made
on the first visit and kept for the life of the process rather than per page view.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path
from string import Template

import falcon

from server.inference.generate import GenerationRequest
from server.inference.guards import RequestBudget
from server.inference.sampling import SamplingParams
from server.runtime import ServerRuntime

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "static" / "index.html"
DEMO = GenerationRequest(
    prompt="My favorite part was when",
    n_words=40,
    n_samples=5,
    sampling=SamplingParams(temperature=0.75),
)


class IndexResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._runtime = runtime
        self._template = Template(TEMPLATE_PATH.read_text(encoding="utf-8"))
        self._page: bytes | None = None
        self._lock = threading.Lock()

    def _render(self) -> bytes:
        models = self._runtime.models
        if models.default_language_model is None:
            continuations = "<p>No language model is loaded.</p>"
        else:
            _, samples = self._runtime.generate.generate(DEMO, RequestBudget.unbounded())
            continuations = (
                "<ol>\n"
                + "\n".join(f"  <li>{html.escape(text)}</li>" for text in samples)
                + "\n</ol>"
            )
        names = ", ".join(sorted(m.manifest.model_id for m in models.by_name.values()))
        return self._template.substitute(
            models=html.escape(names),
            demo_prompt=html.escape(DEMO.prompt),
            continuations=continuations,
        ).encode("utf-8")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            if self._page is None:
                self._page = self._render()
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self._page
