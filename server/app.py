"""`create_app(settings)`: the Falcon app with every route and the one error mapping."""

from __future__ import annotations

from typing import Any

import falcon

from server.config import Settings
from server.http import errors
from server.http.admission import AdmissionMiddleware
from server.http.auth import BearerAuthMiddleware
from server.resources.classify import ClassifyResource
from server.resources.generate import GenerateResource
from server.resources.health import HealthResource, ReadinessResource
from server.resources.index import IndexResource
from server.resources.metrics import MetricsResource
from server.resources.models import ModelsResource
from server.resources.openapi import OpenAPIResource
from server.resources.tokenize import TokenizeResource
from server.resources.v2 import add_v2_routes
from server.runtime import ServerRuntime


def create_app(
    settings: Settings, runtime: ServerRuntime | None = None, middleware: list[Any] | None = None
) -> falcon.App:
    """Build the app. Without `runtime` the bundles are loaded here and warmed in the background;
    a caller passing its own runtime (gunicorn's preload, see server/wsgi.py) starts warm-up itself.
    `middleware` is where cross-cutting layers (limits, metrics, auth) plug in.
    """
    if runtime is None:
        runtime = ServerRuntime.load(settings)
        runtime.start_warm_up()
    # Request metrics and logs first: requests a later layer refuses are counted too.
    layers: list[Any] = [runtime.monitoring.middleware, *(middleware or [])]
    # Auth before admission: an unauthenticated request must not take a slot.
    if settings.auth_token_hash:
        layers.append(BearerAuthMiddleware(settings.auth_token_hash))
    layers.append(AdmissionMiddleware(runtime.admission))
    app = falcon.App(middleware=layers)
    errors.install(app)
    runtime.monitoring.middleware.bind_router(app)
    app.add_route("/", IndexResource(runtime))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadinessResource(runtime))
    app.add_route("/models", ModelsResource(runtime))
    app.add_route("/openapi.json", OpenAPIResource(settings, runtime.models))
    app.add_route("/classify", ClassifyResource(runtime))
    app.add_route("/generate", GenerateResource(runtime))
    app.add_route("/tokenize", TokenizeResource(runtime))
    app.add_route("/metrics", MetricsResource(runtime.monitoring.metrics))
    add_v2_routes(app, runtime)
    return app
