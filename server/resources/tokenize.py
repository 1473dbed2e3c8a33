"""POST /tokenize: the tokens and ids a text becomes (to see which words end up as xxunk)."""

from __future__ import annotations

import falcon

from server.http.body import read_json_object
from server.http.responses import send_json
from server.http.validation import optional_model, reject_unknown_fields, required_text
from server.inference.loading import ModelSet
from server.runtime import ServerRuntime


class TokenizeResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._settings = runtime.settings
        self._models: ModelSet = runtime.models

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self._settings.max_body_bytes)
        reject_unknown_fields(body, ("text", "model"))
        text = required_text(body, "text", self._settings.max_text_chars)
        model = self._models.any_model(optional_model(body))
        ids = [int(i) for i in model.tokenizer.encode(text)]
        req.context.model_id = model.manifest.model_id
        send_json(
            resp,
            {
                "tokens": list(model.tokenizer.ids_to_tokens(ids)),
                "ids": ids,
                "model": model.manifest.model_id,
            },
        )
