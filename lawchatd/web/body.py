"""Strict JSON bodies: UTF-8, bounded depth and numbers, no lone surrogates.

Python's json module accepts things that blow up later, far from the request: a 5,000-digit
integer (ValueError past 4,300 digits, or a C overflow in llama), `NaN`, nesting that hits the
recursion limit, and `"\\ud800"` (a str that cannot be encoded back to UTF-8, so tokenizers and
the database fail on it). Each becomes a `BadBody` here: a 422 that says what is wrong.

`read_json` reads a route's body with a deadline and validates it against the route's model.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from lawchatd.errors import Unprocessable, UserError

Body = TypeVar("Body", bound=BaseModel)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
JSON_BODY = web.RequestKey("json_body", dict)
DEFAULT_BODY_TIMEOUT = 30.0
THREAD_PARSE_BYTES = 64 * 1024

MAX_DEPTH = 32
INT_LIMIT = 1 << 63  # nothing in the API needs an integer outside int64
UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii"})


class BadBody(Unprocessable):
    """A body that is not strict JSON (422)."""


async def read_json(request: web.Request, model: type[Body]) -> Body:
    """The body validated against `model`: 408 when it trickles in too slowly, 422 in words
    when it is not JSON or not well-typed. (A body not declared JSON is refused with 415 by
    the guard middleware, before any route.)"""
    try:
        async with asyncio.timeout(request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)):
            raw = await request.read()
    except (RequestPayloadError, HttpProcessingError):  # a broken chunk, a bad encoding
        raise UserError("The request body could not be read") from None
    except TimeoutError:
        late = "The request body did not arrive in time"
        raise UserError(late, status=408, code="request_timeout") from None
    # A big body is parsed and checked off the event loop (a 1 MiB array: ~0.1 s of CPU).
    data = await asyncio.to_thread(parse, raw) if len(raw) > THREAD_PARSE_BYTES else parse(raw)
    if not isinstance(data, dict):
        raise Unprocessable("The request body must be a JSON object")
    request[JSON_BODY] = data  # the audit trail records what an admin asked for
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise Unprocessable(problems) from None


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or not -INT_LIMIT <= (value := int(text)) < INT_LIMIT:
        raise BadBody("A number in the request body is too large")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody("A number in the request body is too large")
    return value


def _constant(name: str) -> Any:
    raise BadBody(f"{name} is not valid JSON")


def parse(raw: bytes) -> Any:
    """The JSON value in `raw`, or BadBody(422) saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody("The request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except BadBody:
        raise
    except RecursionError:
        raise BadBody("The request body is nested too deeply") from None
    except ValueError:  # JSONDecodeError is one
        raise BadBody("The request body must be a JSON object") from None
    check(data)
    return data


def check(data: Any) -> None:
    """Depth and strings, without recursion (the value may be as deep as the parser allowed)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise BadBody(f"The request body is nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key)
                stack.append((item, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadBody(
            "The request body contains a lone surrogate (\\ud800-\\udfff): not valid Unicode"
        ) from None


def content_type_problem(request: web.BaseRequest) -> str | None:
    """Why this body cannot be JSON (415), or None; an empty body passes (routes without one)."""
    if not request.body_exists:
        return None
    kind = request.content_type
    if kind != "application/json" and not (
        kind.startswith("application/") and kind.endswith("+json")
    ):
        return "The request body must be JSON sent with Content-Type: application/json"
    if request.charset and request.charset.lower() not in UTF8_NAMES:
        return "JSON must be sent as UTF-8 (charset=utf-8)"
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return "Compressed request bodies are not accepted (Content-Encoding)"
    return None
