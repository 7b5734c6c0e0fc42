"""One connection filling one part: the request, the checks on the answer, the byte loop.

Every byte that arrives reaches the file, even when the connection then drops: the retry
re-fetches at most what was in flight. A bandwidth limiter plugs in at one place (`_take`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp
from yarl import URL

from lawchatd.errors import in_words
from lawchatd.fetch.errors import (
    ConnectionLost,
    DownloadFailed,
    OneStream,
    RangeRefused,
    RestartFromZero,
    Transient,
    disk_error,
)
from lawchatd.fetch.partial import PartialFile
from lawchatd.fetch.plan import Part, PartPlan
from lawchatd.fetch.ratelimit import QUANTUM
from lawchatd.fetch.slots import Crowded, Slots
from lawchatd.hub.client import HubClient, TransientHubError, is_transient, transient

WRITE_SIZE = 2 << 20  # bytes gathered before one write: few thread hops, little memory
FLUSH_SECONDS = 0.05  # a slow line still writes often: a kill loses little, progress moves
MAX_WAIT = 600.0  # the longest Retry-After honoured as given
T = TypeVar("T")
RETRYABLE = (aiohttp.ClientError, TimeoutError, ConnectionError, TransientHubError)  # Transient too
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
RANGE_TRIES = 3  # 200s to a range request before one stream is read instead
# What a server that takes fewer connections answers the extra ones (slots.py).
REFUSALS = (403, 429, 503)
REFUSED_CONNECTIONS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)


class Limiter(Protocol):
    """lawchatd.fetch.ratelimit.RateLimiter: the cap shared by every connection."""

    @property
    def rate(self) -> int | None: ...

    async def acquire(self, n: int, owner: object | None = None) -> None: ...


@dataclass
class Link:
    """Where the bytes are, shared by every connection of one download."""

    hub: HubClient
    url: URL | None = None  # None: resolve again before the next request
    etag: str | None = None  # the CDN's own strong ETag for the bytes on disk (If-Range)
    refusals: int = 0  # 200s in a row to ranged requests for the same file
    single_stream: bool = False  # the server keeps refusing ranges: one stream, skip the prefix


@dataclass
class Counters:
    fetched: int = 0  # bytes taken from the network, skipped ones included
    retries: int = 0
    restarts: int = 0


class Follower(Protocol):
    """lawchatd.fetch.hasher.FollowingHasher: what follows the bytes as they are written."""

    def offer(self, chunks: list, offset: int, written: int) -> None: ...


class Backoff(Protocol):
    async def __call__(self, delay: float, exc: BaseException, note: str | None) -> None: ...


class Fetcher:
    def __init__(
        self,
        link: Link,
        partial: PartialFile,
        plan: PartPlan,
        *,
        counters: Counters,
        max_retries: int,
        backoff_base: float,
        backoff: Backoff,
        resolve: Callable[[], Awaitable[None]] | None = None,
        follower: Follower | None = None,
        limiter: Limiter | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        slots: Slots | None = None,
    ) -> None:
        self._link, self._partial, self._plan = link, partial, plan
        self._slots = slots or Slots(1)
        self._timeout = timeout  # None: the session's
        self._counters = counters
        self._max_retries, self._backoff_base = max_retries, backoff_base
        self._backoff = backoff
        self._resolve = resolve
        self._follower = follower
        self._limiter = limiter

    async def fill(self, part: Part) -> None:
        """Fetch the part to its (possibly moving) end, retrying what a retry may cure."""
        await with_retries(
            lambda: self._attempt(part),
            max_retries=self._max_retries,
            base=self._backoff_base,
            backoff=self._backoff,
            counters=self._counters,
            failed=lambda why: (
                f"connection lost: {why} (gave up after {self._max_retries} retries; "
                "the partial file is kept)"
            ),
            progress=lambda: part.done,
        )

    async def _attempt(self, part: Part) -> None:
        if part.remaining <= 0:
            return  # another connection took the rest over while this one waited
        link = self._link
        if link.url is None:
            if self._resolve is None:
                raise DownloadFailed("the file's address expired and cannot be renewed")
            await self._resolve()  # a HubError arrives as DownloadFailed (resolve_into)
        assert link.url is not None
        end = None if part.end == self._plan.size else part.end
        request = link.hub.get_range(link.url, part.offset, end, link.etag, timeout=self._timeout)
        answered = False
        with self._slots.request():
            try:
                async with request as resp:
                    answered = True
                    skip = self._check(resp, part)
                    with self._slots.stream():
                        await self._stream(resp, part, skip)
            except REFUSED_CONNECTIONS as exc:
                if not answered and self._slots.refused():
                    raise Crowded(f"the file server closed an extra connection: {exc!r}") from exc
                raise
        if part.remaining > 0:
            raise ConnectionLost(f"the server closed the connection {part.remaining} bytes early")

    def _check(self, resp: aiohttp.ClientResponse, part: Part) -> int:
        """Raise unless the answer continues the part; return the bytes to skip first."""
        status, headers = resp.status, resp.headers
        if status in REFUSALS and self._slots.refused():
            raise Crowded(f"the file server answered {status} to an extra connection")
        if is_transient(status):
            raise transient("the server", resp)
        if status in (401, 403, 404, 410):
            self._link.url = None  # a presigned URL may have expired: resolve again first
            raise Transient(f"the file server answered {status} {resp.reason}")
        if status == 416:
            raise RestartFromZero("the server cannot satisfy the range of the partial file")
        if status not in (200, 206):
            raise DownloadFailed(f"the file server answered {status} {resp.reason}")
        encoding = headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity":
            raise Transient(f"the server compressed the bytes ({encoding}) despite identity")
        etag = headers.get("ETag")
        strong = etag if etag and not etag.startswith("W/") else None
        if status == 200:
            return self._whole_file(strong, part)
        match = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
        if not match or int(match[1]) != part.offset:
            raise Transient(
                f"the server sent {headers.get('Content-Range')!r} for bytes from {part.offset}"
            )
        if self._link.etag is None and strong:
            self._link.etag = strong  # If-Range must carry the CDN's own ETag, never the sha256
        self._link.refusals = 0  # only refusals in a row lead to one stream
        return 0

    def _whole_file(self, etag: str | None, part: Part) -> int:
        link = self._link
        if part.offset == 0:  # the stream starts where the part does
            link.etag = link.etag or etag
            return 0
        if link.etag is not None and etag is not None and etag != link.etag:
            raise RestartFromZero("the server sent another version of the file to a range request")
        # Without two validators to compare, the sha256 check at the end still guards.
        # The same file, ranges ignored (a proxy, a CDN edge): ask again a few times, then
        # read one stream and skip to where the part goes on.
        if not link.single_stream:
            link.refusals += 1
            if link.refusals < RANGE_TRIES:
                raise RangeRefused("the server ignored the byte range; asking again")
            link.single_stream = True
            raise OneStream("the server keeps ignoring byte ranges: going on with one stream")
        self._counters.restarts += 1
        if self._counters.restarts > self._max_retries:
            raise DownloadFailed(
                "the server ignores byte ranges and the connection keeps dropping: gave up after "
                f"{self._max_retries} restarts from the start of the file; the partial file is kept"
            )
        return part.offset

    async def _stream(self, resp: aiohttp.ClientResponse, part: Part, skip: int) -> None:
        # Chunks are kept as they arrive and written with one pwritev: no copy into a buffer.
        # One batch is written (in a thread) while the next arrives: at LAN speed a connection
        # that waited for each write spent half its time not reading.
        chunks: list = []
        buffered = 0
        at = part.offset  # where the next batch goes in the file: this response's position
        writing: asyncio.Task[None] | None = None  # the batch before
        flush_at = time.monotonic() + FLUSH_SECONDS
        try:
            while chunk := await self._read(resp.content):
                await self._take(chunk)
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = memoryview(chunk)[skip:], 0
                chunks.append(chunk)
                buffered += len(chunk)
                if at + buffered >= part.end:  # another connection may own the rest now
                    break
                if buffered >= WRITE_SIZE or time.monotonic() >= flush_at:
                    if writing is not None:
                        await writing  # in order: the next batch goes where this one ended
                    writing = asyncio.create_task(self._write(part, chunks, at))
                    chunks, at, buffered = [], at + buffered, 0
                    flush_at = time.monotonic() + FLUSH_SECONDS
        finally:
            # Whatever ends the loop (a drop, a stall, a cancel), what arrived is kept.
            if writing is not None:
                await writing
            if chunks:
                await self._write(part, chunks, at)

    async def _read(self, content: aiohttp.StreamReader) -> bytes:
        """The next bytes (b"" at the end). Under a cap, at most QUANTUM: paid for as they
        come, not in the multi-MB lumps a full socket buffer hands over (checked per read, so
        a cap set mid-response applies at once); uncapped, the next piece as the socket gave
        it (`readany` joins the pieces it holds into one bytes: at LAN speed it holds several,
        and the join copied nearly every byte). At a drop, what the reader still holds comes
        first; the error follows at the next read."""
        try:
            if self._limiter is not None and self._limiter.rate:
                return await content.read(QUANTUM)
            while True:
                data, chunk_end = await content.readchunk()
                if data or not chunk_end:  # (b"", True): a chunked body's boundary, go on
                    return data
        except aiohttp.ClientPayloadError:
            if held := leftover(content):
                return held
            raise

    async def _take(self, chunk: bytes) -> None:
        self._counters.fetched += len(chunk)
        if self._limiter is None or not self._limiter.rate:
            return
        # Owned by this connection (one Fetcher per worker): a per-task owner loses its credit.
        await self._limiter.acquire(len(chunk), owner=self)

    async def _write(self, part: Part, chunks: list, at: int) -> None:
        """Write the batch that belongs at file offset `at`, as far as it is still this part's.
        Checked here, on the loop just before the write, not when the batch was gathered: while
        the batch before was being written, another connection may have taken the rest of the
        part over (its end moved down), and a batch written at the part's old offset would put
        these bytes where others belong (and the digest, hashed from memory, would not see it)."""
        room = part.end - at
        if at != part.offset or room <= 0:
            return  # the part ended before this batch: the new owner fetches these bytes
        chunks = clip(chunks, room)
        try:
            written = await self._partial.write(chunks, at)
        except OSError as exc:
            raise disk_error(exc, self._partial.path, self._plan.done, self._plan.size) from exc
        counted = self._plan.record(part, written)  # a steal during the write may own its tail
        if self._follower is not None and counted:
            self._follower.offer(chunks, at, counted)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    base: float,
    backoff: Backoff,
    counters: Counters,
    failed: Callable[[str], str],
    progress: Callable[[], int] = lambda: 0,
) -> T:
    """``attempt()`` until it succeeds, waiting ``backoff`` between tries. A try that moved
    ``progress`` on starts the count again; past ``max_retries`` failures in a row,
    DownloadFailed with ``failed(why)``."""
    failures = 0
    while True:
        before = progress()
        try:
            return await attempt()
        except RETRYABLE as exc:
            failures = 1 if progress() > before else failures + 1
            if failures > max_retries:
                raise DownloadFailed(failed(in_words(exc))) from exc
            counters.retries += 1
            await backoff(backoff_delay(failures, exc, base), exc, getattr(exc, "note", None))


def backoff_delay(failures: int, exc: BaseException, base: float) -> float:
    """The wait before the next try: what the server asked for (Retry-After), else an
    exponential backoff from `base`, capped at 30 s."""
    wait = getattr(exc, "wait", None)
    if wait is not None:
        return min(wait, MAX_WAIT)
    return min(30.0, base * 2 ** (failures - 1))


def leftover(content: aiohttp.StreamReader) -> bytes:
    """The bytes the reader holds after a drop. aiohttp raises the payload error before it
    hands them over (its reads check the error first), and with the daemon's 2 MiB read
    buffer that was up to MBs per drop, fetched again. `_read_nowait` is what `read_nowait`
    does after that check: below the public API, so any change in it only costs the bytes."""
    read = getattr(content, "_read_nowait", None)
    if read is None:
        return b""
    try:
        return read(-1)
    except Exception:
        return b""


def clip(chunks: list, limit: int) -> list:
    """The first `limit` bytes of `chunks`."""
    kept, total = [], 0
    for chunk in chunks:
        if total + len(chunk) >= limit:
            kept.append(memoryview(chunk)[: limit - total])
            return kept
        kept.append(chunk)
        total += len(chunk)
    return kept
