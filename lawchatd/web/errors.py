"""Errors as `{"detail": ...}` (what the original client reads) and request-body parsing."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from lawchatd.web import body

log = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
DEFAULT_BODY_TIMEOUT = 30.0
THREAD_PARSE_BYTES = 64 * 1024


def error(status: int, detail: str, /, **fields: object) -> web.HTTPException:
    """An HTTPException carrying the JSON body the old client expects (`fields` beside it)."""
    body = {"detail": detail, **fields}
    exc = web.HTTPException(text=json.dumps(body), content_type="application/json")
    exc.set_status(status)
    return exc


@web.middleware
async def json_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        # aiohttp's own errors (404 route, 405, 413) speak plain text: say the same in JSON.
        detail = exc.reason
        if exc.status == 413:
            detail = "Request body too large"
        raise error(exc.status, detail) from None
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away: nobody to answer
    except Exception:
        # A bug: the traceback goes to the log, never to the client.
        log.exception("unexpected error in %s %s", request.method, request.path)
        raise error(500, "Internal error; the daemon's log has the details") from None


async def read_json(request: web.Request, model: type[Body]) -> Body:
    """The body validated against `model`: 408 when it trickles in too slowly, 422 in words
    when it is not JSON or not well-typed. (A body not declared JSON is refused with 415 by
    the guard middleware, before any route.)"""
    try:
        async with asyncio.timeout(request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)):
            raw = await request.read()
    except (RequestPayloadError, HttpProcessingError):  # a broken chunk, a bad encoding
        raise error(400, "The request body could not be read") from None
    except TimeoutError:
        late = error(408, "The request body did not arrive in time")
        late.force_close()  # the rest of the body may still be on its way: no keep-alive
        raise late from None
    try:
        # A big body is parsed and checked off the event loop (a 1 MiB array: ~0.1 s of CPU).
        big = len(raw) > THREAD_PARSE_BYTES
        data = await asyncio.to_thread(body.parse, raw) if big else body.parse(raw)
    except body.BadBody as exc:
        raise error(exc.status, exc.detail) from None
    if not isinstance(data, dict):
        raise error(422, "The request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise error(422, problems) from None
