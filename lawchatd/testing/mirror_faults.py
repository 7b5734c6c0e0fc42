"""Fault injection and request records for the mirror: test machinery, never in production.

`install(app)` adds to a mirror app a middleware (503s, a gated repo, ignored ranges, a false
sha256), a body tap (drops, stalls, a flipped byte, a rate limit, bytes counted), a request log,
and optionally the /_mirror/faults, /_mirror/stats and /_mirror/reset control routes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, get_args, get_type_hints

from aiohttp import web

from lawchatd.mirror.body import BODY_TAP

PACED_CHUNK = 64 << 10  # small chunks under a rate limit, so a cancel lands mid-way


@dataclass
class Faults:
    """Faults the mirror injects; every field defaults to off and may be changed at any time.

    A fault with a ``*_times`` counter fires for that many responses (``None``: forever) and then
    disarms itself (value back to ``None``, counter back to 1), so setting the value again re-arms it.
    """

    drop_after: int | None = None  # CDN: send this many body bytes, then close the connection
    drop_times: int | None = 1
    status_503: int = 0  # the next N resolve/CDN requests answer 503 with Retry-After: 0
    stall_after: int | None = None  # CDN: send this many body bytes, then go silent...
    stall_seconds: float = 0.0  # ...for this long, then continue
    stall_times: int | None = 1
    sha256_override: str | None = None  # resolve reports this as X-Linked-Etag
    corrupt_at: int | None = None  # CDN: flip the byte at this absolute file offset
    rate: int | None = None  # CDN: bytes/second per connection
    ignore_range: bool = False  # CDN: answer ranged requests with 200 and the whole file
    gated: bool = False  # resolve answers 401 GatedRepo whatever the token

    def reset(self) -> None:
        """Switch every fault off, in place (tests hold a reference to this object)."""
        for name, value in asdict(Faults()).items():
            setattr(self, name, value)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set fields from a JSON-like mapping; raise ValueError on unknown fields or bad types."""
        checked = {name: _check_fault_value(name, value) for name, value in values.items()}
        for name, value in checked.items():
            setattr(self, name, value)


def _check_fault_value(name: str, value: Any) -> Any:
    hints = get_type_hints(Faults)
    if name not in hints:
        raise ValueError(f"unknown fault {name!r}")
    allowed = get_args(hints[name]) or (hints[name],)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass: only accept it where bool itself is allowed.
    if type(value) in allowed:
        return value
    raise ValueError(f"fault {name!r} cannot be {value!r}")


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    if_range: str | None
    authorization: bool
    host: str | None
    status: int


@dataclass
class MirrorStats:
    bytes_served: int = 0  # body bytes actually written on the CDN route
    requests: list[RequestRecord] = field(default_factory=list)

    def reset(self) -> None:
        self.bytes_served = 0
        self.requests.clear()


FAULTS: web.AppKey[Faults] = web.AppKey("mirror_faults", Faults)
STATS: web.AppKey[MirrorStats] = web.AppKey("mirror_stats", MirrorStats)
# The headers the client sent, when a fault rewrote them (for the records).
_SENT_HEADERS: web.RequestKey[Any] = web.RequestKey("mirror_sent_headers", object)


def _arm(faults: Faults, value_field: str, times_field: str) -> Any:
    """The fault's value if it fires for this response (counting one use), else None."""
    value = getattr(faults, value_field)
    times = getattr(faults, times_field)
    if value is None or (times is not None and times <= 0):
        return None
    if times == 1:
        setattr(faults, value_field, None)  # last use: disarm, leaving the counter at 1
    elif times is not None:
        setattr(faults, times_field, times - 1)
    return value


# --- request-level faults ------------------------------------------------------------------------


def _is_resolve(request: web.Request) -> bool:
    return "/resolve/" in request.path and not request.path.startswith("/cdn/")


def _json_error(status: int, code: str | None, message: str, **headers: str) -> web.Response:
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _fault_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    faults = request.app[FAULTS]
    is_cdn = request.path.startswith("/cdn/")
    if not (is_cdn or _is_resolve(request)):
        return await handler(request)
    if faults.status_503 > 0:
        faults.status_503 -= 1
        return _json_error(503, None, "Service temporarily unavailable", **{"Retry-After": "0"})
    if faults.gated and not is_cdn:
        repo = f"{request.match_info.get('org')}/{request.match_info.get('repo')}"
        return _json_error(401, "GatedRepo", f"Access to model {repo} is restricted.")
    if is_cdn and faults.ignore_range and "Range" in request.headers:
        headers = request.headers.copy()
        del headers["Range"]
        original = request.headers
        request = request.clone(headers=headers)
        request[_SENT_HEADERS] = original
    response = await handler(request)
    if not is_cdn and faults.sha256_override and "X-Linked-Etag" in response.headers:
        response.headers["X-Linked-Etag"] = response.headers["ETag"] = f'"{faults.sha256_override}"'
    return response


# --- body faults ---------------------------------------------------------------------------------


class _Pacer:
    """Sleep-based per-connection rate limit that follows changes to Faults.rate."""

    def __init__(self) -> None:
        self._rate: int | None = None
        self._start = 0.0
        self._sent = 0

    async def after(self, n: int, rate: int | None) -> None:
        if not rate:
            self._rate = None
            return
        if rate != self._rate:
            self._rate, self._start, self._sent = rate, time.monotonic(), 0
        self._sent += n
        delay = self._start + self._sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class _TapSession:
    def __init__(self, faults: Faults, stats: MirrorStats) -> None:
        self.faults, self.stats = faults, stats
        self.drop_at: int | None = _arm(faults, "drop_after", "drop_times")
        self.stall_at: int | None = _arm(faults, "stall_after", "stall_times")
        self.stall_seconds = faults.stall_seconds
        self.pacer = _Pacer()

    async def limit(self, sent: int, n: int) -> int | None:
        if self.stall_at is not None and sent >= self.stall_at:
            self.stall_at = None
            await asyncio.sleep(self.stall_seconds)
        if self.drop_at is not None and sent >= self.drop_at:
            return None
        if self.faults.rate:
            n = min(n, PACED_CHUNK)
        for limit in (self.stall_at, self.drop_at):  # stop exactly at a fault's offset
            if limit is not None:
                n = min(n, limit - sent)
        return n

    def shape(self, offset: int, chunk: bytes) -> bytes:
        at = self.faults.corrupt_at
        if at is None or not offset <= at < offset + len(chunk):
            return chunk
        flipped = bytearray(chunk)
        flipped[at - offset] ^= 0xFF
        return bytes(flipped)

    async def wrote(self, n: int) -> None:
        self.stats.bytes_served += n
        await self.pacer.after(n, self.faults.rate)


class _Tap:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def open(self, request: web.Request) -> _TapSession:
        return _TapSession(self.app[FAULTS], self.app[STATS])


# --- records and control -------------------------------------------------------------------------


async def _record_request(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: recorded before the client can see the response."""
    if request.path.startswith("/_mirror/"):
        return
    headers = request.get(_SENT_HEADERS, request.headers)
    request.app[STATS].requests.append(
        RequestRecord(
            method=request.method,
            path=request.path,
            range=headers.get("Range"),
            if_range=headers.get("If-Range"),
            authorization="Authorization" in headers,
            host=headers.get("Host"),
            status=response.status,
        )
    )


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[FAULTS]))


async def _set_faults(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        request.app[FAULTS].update(body)
    except (ValueError, json.JSONDecodeError) as exc:
        return _json_error(400, None, str(exc))
    return await _get_faults(request)


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[STATS]))


async def _reset(request: web.Request) -> web.Response:
    request.app[FAULTS].reset()
    request.app[STATS].reset()
    return web.json_response({"reset": True})


def install(
    app: web.Application, faults: Faults | None = None, *, control: bool = False
) -> web.Application:
    """Add fault injection and request records to a mirror app that has not started yet."""
    app[FAULTS] = faults if faults is not None else Faults()
    app[STATS] = MirrorStats()
    app[BODY_TAP] = _Tap(app)
    app.middlewares.append(_fault_middleware)
    app.on_response_prepare.append(_record_request)
    if control:
        app.router.add_get("/_mirror/faults", _get_faults)
        app.router.add_post("/_mirror/faults", _set_faults)
        app.router.add_get("/_mirror/stats", _get_stats)
        app.router.add_post("/_mirror/reset", _reset)
    return app
