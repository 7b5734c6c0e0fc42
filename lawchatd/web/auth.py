"""The old app's Bearer auth (and X-API-Key); `?token=` for browsers on the WebSocket only."""

from __future__ import annotations

import hmac

from aiohttp import web

from lawchatd.web.errors import error
from lawchatd.web.keys import SETTINGS

# The health check, and the dashboard page itself (which holds no data and asks for the key).
OPEN_PATHS = ("/healthz", "/", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)
TOKEN_QUERY_PATHS = ("/ws/progress",)


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if "X-API-Key" in request.headers:
        return request.headers["X-API-Key"]
    if request.path in TOKEN_QUERY_PATHS:
        return request.query.get("token")
    return None


@web.middleware
async def require_api_key(request: web.Request, handler):
    api_key = request.app[SETTINGS].api_key
    if api_key is None or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
        return await handler(request)
    presented = _presented_key(request)
    expected = api_key.get_secret_value()
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        exc = error(401, "Invalid or missing API key")
        exc.headers["WWW-Authenticate"] = "Bearer"
        raise exc
    return await handler(request)
