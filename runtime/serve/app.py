"""The ASGI application: OpenAI-compatible routes over a Service, on Starlette.

    POST /v1/completions   completions, streamed as server-sent events with "stream": true
    GET  /v1/models        the one model served
    GET  /health           200 once the model is loaded and the server takes requests, 503 before and after
    GET  /metrics          Prometheus text

Every error is OpenAI's JSON error object; unknown routes are 404 and wrong methods 405 in the same shape.
With an API key every route but /health sits behind BearerAuth. Requests are counted per route and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import BearerAuth
from .completions import CompletionsEndpoint
from .metrics import CONTENT_TYPE
from .schemas import APIError
from .service import Service

log = logging.getLogger("runtime.serve")

ROUTES = ("/v1/completions", "/v1/models", "/health", "/metrics")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class CountRequests:
    """ASGI middleware: counts every HTTP response by route (known routes, else "other") and status."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 0}

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            code = str(status["code"]) if status["code"] else "disconnected"
            self.service.metrics.http_requests.inc(1, route, code)


def create_app(service: Service, load_on_startup: bool = False,
               on_load_failure: Callable[[], None] | None = None) -> CountRequests:
    """The ASGI app of a Service. With load_on_startup the model loads in the background when the server starts
    (uvicorn's lifespan; `on_load_failure` runs if it fails) and the batcher drains on shutdown; otherwise the
    caller loads and stops the service (Ray replicas, tests)."""

    async def models(request: Request) -> Response:
        card = {"id": service.name, "object": "model", "created": service.created, "owned_by": "gpt2-export",
                "root": str(service.config.folder), "max_model_len": service.max_model_len}
        if request.path_params.get("model") not in (None, service.name):
            return error_response(APIError(404, f"model {request.path_params['model']!r} does not exist: this "
                                                f"server serves {service.name!r}", code="model_not_found"))
        if "model" in request.path_params:
            return JSONResponse(card)
        return JSONResponse({"object": "list", "data": [card]})

    async def health(request: Request) -> Response:
        body = {"status": "ok" if service.ready else service.status, "model": service.name}
        if service.error:
            body["error"] = service.error
        return JSONResponse(body, status_code=200 if service.ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 404 and request.url.path.rstrip("/") == "/v1/chat/completions":
            # OpenAI clients try chat first; GPT-2 has no chat template (vLLM answers the same way).
            message = (f"{service.name} is a GPT-2 language model without a chat template: send a prompt to "
                       "/v1/completions instead of messages to /v1/chat/completions")
        elif exc.status_code == 404:
            message = f"no route {request.url.path}: this server has {', '.join(ROUTES)}"
        else:
            message = str(exc.detail)
        return error_response(APIError(exc.status_code, message, headers=dict(exc.headers or {})))

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback; the client gets the error shape every other answer has, not plain text.
        return error_response(APIError(500, f"internal server error ({type(exc).__name__}): see the server log",
                                       code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load_on_startup:
            service.load_in_background(on_load_failure)
        yield
        if load_on_startup:
            # Connections are closed by now (uvicorn drains them first); the batcher finishes what is left.
            await asyncio.to_thread(service.shutdown, True, service.config.drain_timeout)

    app = Starlette(
        routes=[
            Route("/v1/completions", CompletionsEndpoint(service), methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    # Counted outside the key check, so refused keys (401) show in /metrics too.
    guarded = BearerAuth(app, service.config.api_key) if service.config.api_key else app
    return CountRequests(guarded, service)
