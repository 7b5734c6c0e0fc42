"""PartialFile: the `.part` file's descriptor and every thread that uses it.

Writes, syncs and hashes run in threads. A cancelled `await` does not stop its thread, so the
descriptor is closed only after every thread started on it has returned (`aclose`).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

IOV_MAX = 1024  # chunks per pwritev call (the Linux limit)
T = TypeVar("T")


def part_path(final: Path) -> Path:
    """Where the bytes of `final` gather until they are verified: beside it, `.part` added."""
    return final.with_name(final.name + ".part")


class PartialFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._threads: set[asyncio.Future] = set()

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the partial file is not open")
        return self._fd

    async def open(self, *, truncate: bool) -> None:
        def do() -> int:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if truncate else 0)
            return os.open(self.path, flags, 0o644)

        self._fd = await asyncio.to_thread(do)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(fd, *args)` in a thread that `aclose` will wait for."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, self.fd, *args))
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        # The thread runs on if this await is cancelled; `aclose` waits for it.
        return await asyncio.shield(future)

    async def write(self, chunks: list, offset: int) -> int:
        """Write `chunks` at `offset` and start them towards the disk."""
        return await self.run(_write, chunks, offset)

    async def sync(self) -> None:
        await self.run(os.fdatasync)

    async def truncate(self) -> None:
        await self.settle()  # a write still running would land after the truncate
        await self.run(os.ftruncate, 0)

    async def settle(self) -> None:
        """Wait for every thread started on the descriptor (cancelled awaits included)."""
        while self._threads:
            await asyncio.shield(asyncio.wait(set(self._threads)))

    def unlinked(self) -> bool:
        """Someone deleted the file under us: every byte written now would be lost."""
        return os.fstat(self.fd).st_nlink == 0  # a few microseconds: no thread needed

    def stat(self) -> os.stat_result | None:
        """The open file's inode, size and mtime (None before it is opened): a few
        microseconds, no thread needed."""
        return None if self._fd is None else os.fstat(self._fd)

    async def size(self) -> int:
        return (await self.run(os.fstat)).st_size

    async def publish(self, final: Path) -> None:
        await self.run(_publish, self.path, final)

    async def discard(self) -> None:
        await self.run(lambda _fd: self.path.unlink(missing_ok=True))

    async def aclose(self) -> None:
        """Close once every thread on the descriptor has returned (even when cancelled)."""
        if self._fd is None:
            return
        cancelled = False
        while self._threads:
            try:
                await asyncio.shield(asyncio.wait(set(self._threads)))
            except asyncio.CancelledError:
                cancelled = True  # close anyway, then pass the cancel on
        os.close(self._fd)
        self._fd = None
        if cancelled:
            raise asyncio.CancelledError


def pwrite_all(fd: int, chunks: list, offset: int) -> int:
    """Write every chunk at `offset` on, in few system calls; pwritev may write short."""
    views = [memoryview(c) for c in chunks]
    total = 0
    while views:
        written = os.pwritev(fd, views[:IOV_MAX], offset + total)
        total += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]
    return total


def _write(fd: int, chunks: list, offset: int) -> int:
    written = pwrite_all(fd, chunks, offset)
    start_writeback(fd, offset, written)
    return written


def _sync_file_range() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes to the disk now, without waiting for it.
    Otherwise a 1 GiB download leaves up to 1 GiB dirty in the page cache and the fsync
    before the rename waits for all of it (0.4-0.5 s on a fast disk, seconds on a slow one).
    Whole pages only: a page the next write still fills would wait for the disk where the
    device needs stable pages. Only a hint: errors show up at the fdatasync that follows."""
    start = -(-offset // PAGE) * PAGE
    end = (offset + length) // PAGE * PAGE
    if _SYNC_FILE_RANGE is not None and end > start:
        _SYNC_FILE_RANGE(fd, start, end - start, SYNC_FILE_RANGE_WRITE)


def read_into(fd: int, view: memoryview, offset: int) -> int:
    count = os.preadv(fd, [view], offset)
    if not count:
        raise OSError(errno.EIO, "the partial file is shorter than its finished parts")
    return count


def _publish(fd: int, part_file: Path, final: Path) -> None:
    os.fsync(fd)
    os.replace(part_file, final)
    fsync_dir(final.parent)  # the rename itself must survive a power cut


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
