"""Streaming a file's bytes to a client, from DIR or from a fetch still in progress.

A `BodyTap` may watch and shape the stream (the test-suite's fault injection installs one under
`BODY_TAP`); production mirrors have none, and this module imports nothing of the tests.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from aiohttp import web

CHUNK = 1 << 20  # read size of the fast path


class Source(Protocol):
    async def read(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset; b"" when they will never come (the fetch failed)."""
        ...

    def close(self) -> None: ...


class FileSource:
    """A complete file in DIR, opened once (a rename or delete under us cannot swap it)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self, offset: int, n: int) -> bytes:
        return await asyncio.to_thread(os.pread, self._fd, n, offset)

    def close(self) -> None:
        os.close(self._fd)


class TapSession(Protocol):
    async def limit(self, sent: int, n: int) -> int | None:
        """How many bytes to send next (may wait first); None drops the connection."""
        ...

    def shape(self, offset: int, chunk: bytes) -> bytes: ...

    async def wrote(self, n: int) -> None: ...


class BodyTap(Protocol):
    def open(self, request: web.Request) -> TapSession: ...


BODY_TAP: web.AppKey[BodyTap] = web.AppKey("mirror_body_tap")


async def send_body(
    request: web.Request, resp: web.StreamResponse, source: Source, start: int, length: int
) -> None:
    tap = request.app.get(BODY_TAP)
    session = tap.open(request) if tap is not None else None
    sent = 0
    await resp.write(b"")  # flush the headers now, so a drop or stall at 0 still has them sent
    while sent < length:
        n: int | None = min(CHUNK, length - sent)
        if session is not None:
            n = await session.limit(sent, n)
        chunk = await source.read(start + sent, n) if n else b""
        if not chunk:
            hard_drop(request)  # a fault, a file that shrank, a failed fetch: never pad
            return
        if session is not None:
            chunk = session.shape(start + sent, chunk)
        try:
            await resp.write(chunk)
        except ConnectionResetError:
            return  # the client went away (a cancel, a stolen part): nothing to report
        sent += len(chunk)
        if session is not None:
            await session.wrote(len(chunk))
    if session is not None and await session.limit(sent, 0) is None:
        hard_drop(request)  # a fault set at the very end still fires


def hard_drop(request: web.Request) -> None:
    # close() flushes what is buffered, then FINs: the client sees a body shorter than declared.
    if request.transport is not None:
        request.transport.close()
