"""The old app's Bearer auth (and X-API-Key), a browser session's cookie, and `?token=` on the
WebSocket (browsers cannot set headers there)."""

from __future__ import annotations

from aiohttp import web

from lawchatd.errors import Unauthorized
from lawchatd.web.keys import SETTINGS
from lawchatd.web.session import COOKIE, SESSIONS, keys_match

# The health check, the dashboard page itself (it holds no data and asks for the key), and
# the session route (POST is the login, DELETE only ends the session it is sent with).
OPEN_PATHS = ("/healthz", "/", "/favicon.ico", "/session")
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
    if presented is not None:  # a key sent on purpose must be the right one
        if keys_match(presented, api_key):
            return await handler(request)
    else:
        sessions = request.app[SESSIONS]
        if digest := sessions.live(request.cookies.get(COOKIE)):
            with sessions.holding(digest, request.transport):
                return await handler(request)
    raise Unauthorized("Invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})
