"""GET /openapi.json: the hand-written spec shipped beside the code (server/openapi.json)."""

from __future__ import annotations

from pathlib import Path

import falcon

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


class OpenAPIResource:
    def __init__(self) -> None:
        self._spec = SPEC_PATH.read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._spec
