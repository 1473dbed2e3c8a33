"""POST /tokenize: the tokens and ids a text becomes (to see which words end up as xxunk)."""

from __future__ import annotations

import falcon

from server.body import read_json_object
from server.errors import NoModelForTask
from server.responses import send_json
from server.runtime import ServerRuntime
from server.validation import optional_name, reject_unknown_fields, required_text


class TokenizeResource:
    def __init__(self, runtime: ServerRuntime) -> None:
        self._settings = runtime.settings
        self._models = runtime.models.by_name
        # ULMFiT's classifier reuses the LM's vocabulary; default to the classifier's tokenizer.
        default = runtime.models.classifier or runtime.models.language_model
        self._default = default.manifest.name if default is not None else None

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self._settings.max_body_bytes)
        reject_unknown_fields(body, ("text", "model"))
        text = required_text(body, "text", self._settings.max_text_chars)
        name = optional_name(body, "model", self._models) or self._default
        if name is None:
            raise NoModelForTask("tokenize")
        model = self._models[name]
        ids = model.tokenizer.encode(text)
        ids = [int(i) for i in ids]
        send_json(
            resp,
            {
                "tokens": list(model.tokenizer.ids_to_tokens(ids)),
                "ids": ids,
                "model": model.manifest.model_id,
            },
        )
