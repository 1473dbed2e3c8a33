"""Optional bearer-token auth, for deployments that Cloud Run IAM does not guard.

Why a hash in the environment: env vars end up in deploy logs and `gcloud run services
describe`; the sha256 of a long random token is useless to whoever reads it. The check hashes
what the client sent and compares digests with `hmac.compare_digest`, so the time it takes does
not tell how much of a guess was right. Health probes stay open: the platform calls them
without credentials.
"""

from __future__ import annotations

import hashlib
import hmac

import falcon

from server.http.errors import Unauthorized

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
_SCHEME = "bearer"


def token_hash(token: str) -> str:
    """What AUTH_TOKEN_HASH holds for `token` (`printf %s "$TOKEN" | sha256sum`)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _SCHEME or not token:
        return None
    return token


class BearerAuthMiddleware:
    """Falcon middleware: 401 unless the request carries the token whose sha256 is configured."""

    def __init__(self, expected_hash: str) -> None:
        self._expected = bytes.fromhex(expected_hash)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in OPEN_PATHS:
            return
        token = bearer_token(req.get_header("Authorization"))
        # Hash even when absent, so a missing header costs what a wrong one does.
        digest = hashlib.sha256((token or "").encode("utf-8", "surrogatepass")).digest()
        if token is None or not hmac.compare_digest(digest, self._expected):
            raise Unauthorized()
