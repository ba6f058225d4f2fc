"""Bearer-token authentication as ASGI middleware: every route but /health needs `Authorization: Bearer <key>`.

The key is compared with `hmac.compare_digest`, in time that does not depend on where the first wrong byte
is; a missing or wrong key gets 401 with `WWW-Authenticate: Bearer`, in OpenAI's error shape.
"""

from __future__ import annotations

import hmac
import json

from .schemas import APIError

OPEN_PATHS = frozenset({"/health"})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


async def send_error(send, error: APIError) -> None:
    """Answer an ASGI http request with an APIError as JSON."""
    body = json.dumps(error.body()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Wraps an ASGI app; requests without the right bearer token never reach it."""

    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers", []))
        if token is None or not hmac.compare_digest(token, self._key):
            message = ("missing API key: send the header 'Authorization: Bearer <key>'" if token is None
                       else "invalid API key")
            await send_error(send, APIError(401, message, code="invalid_api_key",
                                            headers={"WWW-Authenticate": "Bearer"}))
            return
        await self.app(scope, receive, send)
