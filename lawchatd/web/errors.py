"""The one renderer: any error as an answer, in the shape its client reads.

- `{"detail": ...}` on the daemon's own routes and the old app's (what the old client reads);
- OpenAI's `{"error": {"message", "type", "param", "code"}}` on `/v1`, whose SDKs show
  `error.message` and obey `x-should-retry`;
- the Hub's `{"error": ...}` with X-Error-Code / X-Error-Message on the mirror, which
  huggingface_hub turns into its RepositoryNotFoundError, EntryNotFoundError, ...

All three are written from the same `LawchatdError` (lawchatd/errors.py): routes just raise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from lawchatd.errors import INTERNAL, LawchatdError, UserError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAI_PREFIX = "/v1/"

# OpenAI's codes for aiohttp's own refusals (an unknown route, a wrong method, a huge body).
_AIOHTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
_AIOHTTP_DROPPED = {"content-type", "content-length"}


def as_error(exc: BaseException) -> LawchatdError:
    """`exc` as one of lawchatd's errors; a bug becomes a 500 that tells nothing of it."""
    if isinstance(exc, LawchatdError):
        return exc
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        # aiohttp's own errors (404 route, 405, 413) speak plain text: say the same in JSON.
        message = "Request body too large" if exc.status == 413 else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _AIOHTTP_DROPPED}
        code = _AIOHTTP_CODES.get(exc.status)
        return UserError(message, status=exc.status, code=code, headers=headers)
    return LawchatdError(INTERNAL)


def _headers(error: LawchatdError) -> dict[str, str]:
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return headers


def _answer(error: LawchatdError, body: object, headers: dict[str, str]) -> web.Response:
    reason = None if error.reason is None else _printable(error.reason)  # one status line
    response = web.json_response(body, status=error.status, headers=headers, reason=reason)
    if error.status == 408:
        response.force_close()  # the rest of a late body may still be on its way
    return response


def detail_response(error: LawchatdError) -> web.Response:
    """`{"detail": message}`, with the error's extra fields beside it."""
    return _answer(error, {"detail": error.message, **error.fields}, _headers(error))


def openai_body(error: LawchatdError) -> dict[str, str | None]:
    """The object inside OpenAI's `{"error": ...}` (also sent inside a broken stream)."""
    return {
        "message": error.message,
        "type": _openai_type(error.status),
        "param": error.param,
        "code": error.code,
    }


def openai_response(error: LawchatdError) -> web.Response:
    """OpenAI's shape. With `retry_after` the SDKs wait that long and retry; a 503 without
    it tells them not to (no model is loaded: retrying will not load one)."""
    headers = _headers(error)
    if error.retry_after is not None:
        headers["x-should-retry"] = "true"
    elif error.status == 503:
        headers["x-should-retry"] = "false"
    return _answer(error, {"error": openai_body(error)}, headers)


def hub_response(error: LawchatdError) -> web.Response:
    """The Hub's shape: `{"error": message}` and X-Error-Code / X-Error-Message headers (the
    message as one printable ASCII line, as HTTP headers must be)."""
    headers = _headers(error)
    if error.code:
        headers["X-Error-Code"] = error.code
    headers["X-Error-Message"] = _printable(error.message)
    return _answer(error, {"error": error.message}, headers)


def _openai_type(status: int) -> str:
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _printable(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~")


def rendered(exc: BaseException, request: web.Request) -> LawchatdError:
    """`exc` as an error to render; a bug's traceback goes to the log, never to the client."""
    if not isinstance(exc, LawchatdError | web.HTTPException):
        log.error("unexpected error in %s %s", request.method, request.path, exc_info=exc)
    return as_error(exc)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The daemon's errors: OpenAI's shape under /v1, `{"detail"}` elsewhere."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect, not an error
        error = rendered(exc, request)
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away: nobody to answer
    except Exception as exc:
        error = rendered(exc, request)
    if request.path.startswith(OPENAI_PREFIX):
        return openai_response(error)
    return detail_response(error)


@web.middleware
async def hub_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The mirror's errors, in the Hub's shape; aiohttp's own refusals stay as they are."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:
        return hub_response(rendered(exc, request))
