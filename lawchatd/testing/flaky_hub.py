"""An independent Hub + CDN stand-in with seeded faults, for the download engine's tests.

The Hub answers `resolve` with a 302 to a CDN on another port, carrying X-Repo-Commit,
X-Linked-Etag (the sha256) and X-Linked-Size, as huggingface.co does. The CDN has its own ETag,
honours Range and If-Range, and behaves like CloudFront when asked for gzip (ignores Range).
Each fault is either queued (`faults.queue("503", 2)`) or drawn at random per CDN request from
`faults.storm` with a seeded generator.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import serve

COMMIT = "c0ffee" * 6 + "abcd"
KINDS = (
    "drop", "503", "429", "stall", "stall_long", "ignore_range", "wrong_range", "short_206",
    "cdn_404", "corrupt", "gzip_206",
)  # fmt: skip
# A storm's chances per CDN request, drawn in this order; with `Faults.cap` set, every other
# answer drops at a random point within `cap` bytes.
STORM = {
    "503": 0.05, "429": 0.03, "stall": 0.04, "stall_long": 0.02, "ignore_range": 0.04,
    "wrong_range": 0.04, "short_206": 0.05, "cdn_404": 0.04, "gzip_206": 0.03, "corrupt": 0.02,
}  # fmt: skip
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Request:
    path: str
    range: str | None
    if_range: str | None
    accept_encoding: str | None
    status: int = 0
    fault: str | None = None
    sent: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class Faults:
    seed: int = 0
    storm: dict[str, float] = field(default_factory=dict)  # kind -> probability per request
    queued: list[str] = field(default_factory=list)  # kinds for the next CDN requests, in order
    drop_after: int | None = None  # every response closes after this many bytes
    ignore_range_always: bool = False
    no_etag: bool = False
    retry_after: int = 1
    stall_seconds: float = 0.3
    stall_long_seconds: float = 2.0
    rate: int | None = None  # bytes/s per response
    crawl_rate: int = 300_000  # bytes/s of a "crawl" response (one bad route)
    max_corrupt: int = 1  # corrupt responses at most (each costs a whole download)
    span: int = 2 << 20  # drops and stalls strike within this many bytes of a response
    cap: int | None = None  # every answer without another fault drops within this many bytes
    injected: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def queue(self, kind: str, times: int = 1) -> None:
        self.queued.extend([kind] * times)

    def draw(self) -> str | None:
        if self.queued:
            return self.queued.pop(0)
        for kind, chance in self.storm.items():
            if self.rng.random() < chance:
                if kind == "corrupt" and self.injected["corrupt"] >= self.max_corrupt:
                    continue
                return kind
        return None


@dataclass
class FlakyHub:
    url: str  # the Hub endpoint (LAWCHATD_HF_ENDPOINT)
    cdn_url: str
    files: dict[str, bytes]
    faults: Faults
    requests: list[Request] = field(default_factory=list)
    resolves: int = 0
    served: int = 0  # bytes written to clients, all requests
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (when, served) if `trace`
    trace: bool = False
    runners: list[web.AppRunner] = field(default_factory=list)

    @property
    def bytes_served(self) -> int:
        return sum(r.sent for r in self.requests)

    def __post_init__(self) -> None:
        # Hashed once: hashing a big file per request would stall this server's event loop.
        self.sha256 = {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}

    def cdn_etag(self, name: str) -> str:
        return f'"cdn-{self.sha256[name][:32]}"'  # the CDN's own validator, not the sha256

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()

    # ---- the Hub ------------------------------------------------------------------------

    async def resolve(self, request: web.Request) -> web.Response:
        name = request.match_info["filename"]
        if name not in self.files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        self.resolves += 1
        data = self.files[name]
        return web.Response(
            status=302,
            headers={
                "Location": f"{self.cdn_url}/blob/{name}?X-Amz-Signature=s{self.resolves}",
                "X-Repo-Commit": COMMIT,
                "X-Linked-Etag": f'"{self.sha256[name]}"',
                "X-Linked-Size": str(len(data)),
            },
        )

    # ---- the CDN ------------------------------------------------------------------------

    async def blob(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["filename"]
        record = Request(
            request.path, request.headers.get("Range"), request.headers.get("If-Range"),
            request.headers.get("Accept-Encoding"),
        )  # fmt: skip
        self.requests.append(record)
        data = self.files[name]
        etag = self.cdn_etag(name)
        fault = self.faults.draw()
        if fault:
            self.faults.injected[fault] += 1
            record.fault = fault
        if fault in ("503", "429", "cdn_404"):
            record.status = {"503": 503, "429": 429, "cdn_404": 404}[fault]
            headers = {"Retry-After": str(self.faults.retry_after)} if fault == "429" else {}
            return web.Response(status=record.status, headers=headers)
        start, end = 0, len(data)
        match = _RANGE.fullmatch(record.range or "")
        honour = (
            match
            and fault != "ignore_range"
            and not self.faults.ignore_range_always
            and "gzip" not in (record.accept_encoding or "")  # CloudFront with gzip accepted
            and (record.if_range is None or record.if_range == etag)
        )
        headers = {"Accept-Ranges": "bytes"}
        if not self.faults.no_etag:
            headers["ETag"] = etag
        if honour:
            assert match is not None
            start = int(match[1])
            end = min(int(match[2]) + 1, len(data)) if match[2] else len(data)
            claimed = start + 1000 if fault == "wrong_range" else start
            headers["Content-Range"] = f"bytes {claimed}-{end - 1}/{len(data)}"
            record.status = 206
            if fault == "gzip_206":
                headers["Content-Encoding"] = "gzip"
        else:
            record.status = 200
        body: bytes | memoryview = memoryview(data)[start:end]  # no copy of a big file
        if fault == "corrupt" and body:
            spot = self.faults.rng.randrange(len(body))
            body = bytes(body[:spot]) + bytes([body[spot] ^ 0xFF]) + bytes(body[spot + 1 :])
        response = web.StreamResponse(status=record.status, headers=headers)
        response.content_length = len(body)
        try:
            await response.prepare(request)
        except ConnectionError:  # the client already went away
            raise asyncio.CancelledError from None
        await self._send(request, response, body, record, fault)
        return response

    async def _send(self, request, response, body, record: Request, fault) -> None:
        cut = len(body)
        spot = self.faults.rng.randrange(self.faults.span)
        if fault in ("drop", "short_206"):
            cut = min(spot, max(0, len(body) - 1))
        if self.faults.cap and fault is None:
            # The storm's background: answers drop at a random point within `cap` bytes.
            limit = self.faults.rng.randrange(self.faults.cap)
            if limit < len(body):
                cut = limit
                self.faults.injected["drop"] += 1
                record.fault = "drop"
        if self.faults.drop_after is not None:
            cut = min(cut, self.faults.drop_after)
        stall_at = (
            self.faults.rng.randrange(len(body)) if fault and "stall" in fault and body else -1
        )
        step = 64 << 10
        for offset in range(0, cut, step):
            if stall_at >= 0 and offset >= stall_at:
                long = fault == "stall_long"
                await asyncio.sleep(
                    self.faults.stall_long_seconds if long else self.faults.stall_seconds
                )
                stall_at = -1
            piece = body[offset : min(offset + step, cut)]
            try:
                await response.write(piece)
            except ConnectionError:  # the client went away (a cancel, a refused answer)
                raise asyncio.CancelledError from None
            record.sent += len(piece)
            self.served += len(piece)
            if self.trace:
                self.timeline.append((time.monotonic(), self.served))
            rate = self.faults.crawl_rate if fault == "crawl" else self.faults.rate
            if rate:
                await asyncio.sleep(len(piece) / rate)
        if cut < len(body):
            # Close the socket mid-body: the client sees the connection end early.
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError


async def start_flaky_hub(files: dict[str, bytes], faults: Faults | None = None) -> FlakyHub:
    hub_port, cdn_port = free_port(), free_port()
    hub = FlakyHub(
        f"http://127.0.0.1:{hub_port}", f"http://127.0.0.1:{cdn_port}", files, faults or Faults()
    )
    hub_app, cdn_app = web.Application(), web.Application()
    hub_app.router.add_route("*", "/{org}/{repo}/resolve/{rev}/{filename}", hub.resolve)
    cdn_app.router.add_get("/blob/{filename}", hub.blob)
    for app, port in ((hub_app, hub_port), (cdn_app, cdn_port)):
        _url, runner = await serve(app, port, shutdown_timeout=0.2)
        hub.runners.append(runner)
    return hub
