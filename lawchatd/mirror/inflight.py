"""A fetch in flight, and the bytes it has so far handed to clients as they reach the disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from lawchatd.mirror.engine_fetch import EngineFetch
from lawchatd.mirror.upstream import UpstreamFile

WAKE_SECONDS = 1.0  # readers look again at least this often, whatever the fetch reports


@dataclass
class Fetch:
    """One file on its way from the upstream; every client asking for it shares this."""

    file: UpstreamFile
    target: Path  # where it lands in DIR
    started: float = field(default_factory=time.time)
    transfer: EngineFetch = field(init=False)  # set right after construction: it reports to notify
    task: asyncio.Task[Path | None] | None = None
    failed: str | None = None
    waiting: str | None = None  # why the fetch waits (the upstream is down), in words
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), WAKE_SECONDS)

    async def ready(self, offset: int, seconds: float) -> bool:
        """Whether a byte at `offset` is there (or the fetch ended) within `seconds`."""
        deadline = time.monotonic() + seconds
        while self.available(offset) <= offset and self.failed is None:
            if self.task is not None and self.task.done():
                break
            if time.monotonic() >= deadline:
                return False
            await self.wait()
        return True

    def available(self, offset: int) -> int:
        """The end of the bytes that can be read without a gap from `offset`."""
        task = self.task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            return self.file.size  # published: every byte is there
        return self.transfer.available(offset)

    def names(self) -> list[Path]:
        """Where the bytes are, in the order they move: partial, verified, in DIR."""
        return [self.transfer.part_file, self.transfer.verified_file, self.target]


class FillingSource:
    """Bytes of a fetch in progress (a body.Source), handed out as they reach the disk."""

    def __init__(self, fetch: Fetch, patience: float) -> None:
        self._fetch = fetch
        self._patience = patience  # seconds without a new byte before the client is cut
        self._fd: int | None = None

    async def read(self, offset: int, n: int) -> bytes:
        # Cut short, the client asks again from where it got to and hears a 503 if the
        # upstream is still away: better than silence until its read timeout.
        if not await self._fetch.ready(offset, self._patience):
            return b""
        end = self._fetch.available(offset)
        if end <= offset:
            return b""  # the fetch failed: the client sees a short body and asks again
        if self._fd is None and not await asyncio.to_thread(self._open):
            return b""
        assert self._fd is not None
        return await asyncio.to_thread(os.pread, self._fd, min(n, end - offset), offset)

    def _open(self) -> bool:
        # The partial, renamed while open, stays the same file: open whichever name it has now.
        for name in self._fetch.names():
            with contextlib.suppress(FileNotFoundError):
                self._fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
                return True
        return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
