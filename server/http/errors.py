"""The one place where failures become HTTP answers.

Every error a client sees is JSON `{"title": ..., "description": ...}` (under /v2 the protocol's
`{"error": ...}`). Client mistakes found at the HTTP edge are raised as the `falcon.HTTPError`
subclasses below; the inference wing raises plain exceptions (server/inference/errors.py) that
`http_error` maps here; anything else is a bug in us, so the catch-all logs the traceback and
answers a bland 500 that never contains it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon

from server.inference.errors import (
    BatchFailed,
    DeadlineExceeded,
    InferenceError,
    NoModelForTask,
    UnknownModel,
)

log = logging.getLogger("server.errors")


class InvalidRequest(falcon.HTTPBadRequest):
    """The body parsed but a field is missing, unknown, of the wrong type or out of range."""

    def __init__(self, description: str) -> None:
        super().__init__(title="Invalid request", description=description)


class MalformedJSON(falcon.HTTPBadRequest):
    """The body is not one strict JSON object (syntax, encoding, NaN/Infinity, duplicates)."""

    def __init__(self, description: str) -> None:
        super().__init__(title="Malformed JSON", description=description)


class UnreadableBody(falcon.HTTPBadRequest):
    """The body could not be read as sent (bad chunked framing, short body, dropped connection)."""

    def __init__(self) -> None:
        super().__init__(
            title="Unreadable body", description="The request body could not be read as framed."
        )


class BodyTooLarge(falcon.HTTPContentTooLarge):
    """The body (declared or actually sent) is over MAX_BODY_BYTES."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            title="Request body too large",
            description=f"The request body must be at most {limit} bytes.",
        )


class NotJSON(falcon.HTTPUnsupportedMediaType):
    """POST endpoints only speak JSON."""

    def __init__(self, got: str | None) -> None:
        shown = repr(got) if got else "none"
        super().__init__(
            title="Unsupported media type",
            description=f"Content-Type must be application/json (got {shown}).",
        )


class NotReady(falcon.HTTPServiceUnavailable):
    """Readiness probe answer while loading, warming up or draining."""

    def __init__(self, state: str) -> None:
        super().__init__(
            title="Not ready", description=f"The server is {state}.", headers={"Retry-After": "1"}
        )


class Overloaded(falcon.HTTPServiceUnavailable):
    """More requests than WEB_THREADS at once: shed now rather than queue without bound."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            title="Overloaded",
            description=f"The server is already working on {limit} requests; "
            f"retry after {retry_after_s} s.",
            headers={"Retry-After": str(retry_after_s)},
        )


class ShuttingDown(falcon.HTTPServiceUnavailable):
    """SIGTERM arrived: requests in flight finish, new ones go elsewhere."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            title="Shutting down",
            description="This instance is draining; retry on another one.",
            headers={"Retry-After": str(retry_after_s), "Connection": "close"},
        )


class UnsupportedBody(falcon.HTTPUnsupportedMediaType):
    """A body in a media type or content coding the route does not speak."""

    def __init__(self, description: str) -> None:
        super().__init__(title="Unsupported media type", description=description)


class Unauthorized(falcon.HTTPUnauthorized):
    """AUTH_TOKEN_HASH is set and the request has no (or a wrong) bearer token."""

    def __init__(self) -> None:
        super().__init__(
            title="Unauthorized",
            description="Send 'Authorization: Bearer <token>'.",
            challenges=['Bearer realm="fastai-onnx-serve"'],
        )


def http_error(exc: InferenceError) -> falcon.HTTPError:
    """The HTTP answer for a failure of model work (the only such mapping in the server)."""
    if isinstance(exc, DeadlineExceeded):
        return falcon.HTTPGatewayTimeout(
            title="Deadline exceeded",
            description=f"The request did not finish within {exc.timeout_s:g} s "
            "(REQUEST_TIMEOUT_S); its work was stopped.",
        )
    if isinstance(exc, UnknownModel):
        return falcon.HTTPNotFound(title="Unknown model", description=str(exc))
    if isinstance(exc, NoModelForTask):
        return falcon.HTTPNotFound(title="No model", description=str(exc))
    if isinstance(exc, BatchFailed):
        log.error("a coalesced classify call failed", exc_info=exc.__cause__ or exc)
        return falcon.HTTPInternalServerError(
            title="Internal server error", description=_DEFAULT_DESCRIPTIONS[500]
        )
    log.error("unmapped inference error", exc_info=exc)
    return falcon.HTTPInternalServerError(
        title="Internal server error", description=_DEFAULT_DESCRIPTIONS[500]
    )


_DEFAULT_DESCRIPTIONS = {
    404: "No such route. See GET /openapi.json for the API.",
    405: "This route does not accept that method; see the Allow header.",
    500: "The server failed to handle the request; it has been logged.",
}


def error_body(title: str, description: str) -> bytes:
    return json.dumps({"title": title, "description": description}).encode()


V2_PREFIX = "/v2"


def error_body_for(req: falcon.Request, title: str, description: str) -> bytes:
    """Under /v2 the Open Inference Protocol's `{"error": ...}` (what v2 clients read);
    everywhere else `{title, description}`."""
    if req.path == V2_PREFIX or req.path.startswith(V2_PREFIX + "/"):
        return json.dumps({"error": f"{title}: {description}"}).encode()
    return error_body(title, description)


def serialize_error(
    req: falcon.Request, resp: falcon.Response, exception: falcon.HTTPError
) -> None:
    """Falcon's error serializer, replaced so every error is JSON whatever the Accept header."""
    status_code = exception.status_code
    title = exception.title or falcon.code_to_http_status(status_code)[4:]
    description = exception.description or _DEFAULT_DESCRIPTIONS.get(status_code, title + ".")
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_body_for(req, title, description)


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    """Catch-all: log the traceback for us, answer 500 JSON without it for the client."""
    log.error("unhandled error on %s %s", req.method, req.path, exc_info=ex)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_body_for(req, "Internal server error", _DEFAULT_DESCRIPTIONS[500])


def handle_inference_error(
    req: falcon.Request, resp: falcon.Response, ex: InferenceError, params: dict[str, Any]
) -> None:
    """Model work failed: answer as `http_error` says, through the same serializer."""
    error = http_error(ex)
    resp.status = error.status
    serialize_error(req, resp, error)


def install(app: falcon.App) -> None:
    """Wire the serializer, the inference mapping and the catch-all into an app (HTTPError keeps
    its own handler; Falcon picks the most specific handler of a raised exception)."""
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(InferenceError, handle_inference_error)
