"""Errors on `/v1` in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

The official SDKs read `error.message` (without it they show only "Error code: 503"), and
`x-should-retry` tells them whether retrying can help. The statuses stay lawchatd's; only
the body changes, so every error the rest of the app raises as `{"detail"}` (auth, bad JSON,
body too large, an unknown route) is rewritten here for `/v1` paths.
"""

from __future__ import annotations

import json

from aiohttp import web

PREFIX = "/v1/"
_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    429: "rate_limit_exceeded",
}


def _type_of(status: int) -> str:
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after: int | None = None,
) -> web.HTTPException:
    """An HTTPException whose body is OpenAI's error object. `retry_after` (seconds): the
    SDKs wait that long and try again; without it a 503 tells them not to retry."""
    body = {
        "error": {
            "message": message,
            "type": _type_of(status),
            "param": param,
            "code": code or _CODES.get(status),
        }
    }
    exc = web.HTTPException(text=json.dumps(body), content_type="application/json")
    exc.set_status(status)
    if retry_after is not None:
        exc.headers["Retry-After"] = str(retry_after)
        exc.headers["x-should-retry"] = "true"
    elif status == 503:
        exc.headers["x-should-retry"] = "false"
    return exc


def _reshaped(exc: web.HTTPException) -> web.HTTPException:
    try:
        body = json.loads(exc.text or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return exc  # already OpenAI's shape
    detail = body.get("detail") if isinstance(body, dict) else None
    new = openai_error(exc.status, str(detail or exc.reason))
    for name, value in exc.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            new.headers.setdefault(name, value)
    return new


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Outermost middleware: the `/v1` errors of every other layer, reshaped."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        raise _reshaped(exc) from None
    # A bug is already a JSON 500 from json_errors inside (reshaped above); a client that went
    # away gets nothing.
