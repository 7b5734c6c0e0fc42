"""Strict JSON bodies: UTF-8, bounded depth and numbers, no lone surrogates.

Python's json module accepts things that blow up later, far from the request: a 5,000-digit
integer (ValueError past 4,300 digits, or a C overflow in llama), `NaN`, nesting that hits the
recursion limit, and `"\\ud800"` (a str that cannot be encoded back to UTF-8, so tokenizers and
the database fail on it). Each becomes a `BadBody` here, which the caller turns into a 4xx.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

MAX_DEPTH = 32
INT_LIMIT = 1 << 63  # nothing in the API needs an integer outside int64
UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii"})


class BadBody(ValueError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or not -INT_LIMIT <= (value := int(text)) < INT_LIMIT:
        raise BadBody(422, "A number in the request body is too large")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadBody(422, "A number in the request body is too large")
    return value


def _constant(name: str) -> Any:
    raise BadBody(422, f"{name} is not valid JSON")


def parse(raw: bytes) -> Any:
    """The JSON value in `raw`, or BadBody(422) saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(422, "The request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except BadBody:
        raise
    except RecursionError:
        raise BadBody(422, "The request body is nested too deeply") from None
    except ValueError:  # JSONDecodeError is one
        raise BadBody(422, "The request body must be a JSON object") from None
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
                raise BadBody(422, f"The request body is nested deeper than {MAX_DEPTH} levels")
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
            422, "The request body contains a lone surrogate (\\ud800-\\udfff): not valid Unicode"
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
