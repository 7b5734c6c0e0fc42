"""Errors as `{"detail": ...}` (what the original client reads) and request-body parsing."""

from __future__ import annotations

import json
import logging
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)


def error(status: int, detail: str) -> web.HTTPException:
    """An HTTPException carrying the JSON body the old client expects."""
    exc = web.HTTPException(text=json.dumps({"detail": detail}), content_type="application/json")
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


async def read_json(request: web.Request, model: type[Body]) -> Body:
    """The body validated against `model`; 422 in words when it is not JSON or not well-typed."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error(422, "The request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise error(422, "The request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise error(422, problems) from None
