"""A sha256 that follows the contiguous prefix of finished bytes, in a thread of its own.

The batches connections have just written near where the digest stands are hashed from the
same memory (`offer` keeps up to HOLD bytes, besides the batches being hashed); the bytes
written further ahead are read back from the page cache once the prefix reaches them. The
digest is ready moments after the last byte arrives, and neither the event loop nor a
connection's writes wait for the hash.
"""

from __future__ import annotations

import asyncio
import hashlib

from lawchatd.fetch.partial import PartialFile, read_into
from lawchatd.fetch.plan import PartPlan

HASH_SIZE = 16 << 20  # bytes hashed per thread call: keeps cancellation prompt
HASH_READ = 4 << 20  # one reused read buffer
HOLD = 16 << 20  # written bytes kept in memory for the hash, within this distance of it


class FollowingHasher:
    def __init__(self, partial: PartialFile, plan: PartPlan) -> None:
        self._partial = partial
        self._plan = plan
        self._sha = hashlib.sha256()
        self.hashed = 0
        self._held: dict[int, tuple[list, int]] = {}  # offset -> (chunks, bytes) written there
        self._held_bytes = 0
        self._moved = asyncio.Event()
        # This hasher's own buffer: a cancelled call may still fill it in its thread, and
        # the hasher is then discarded with it.
        self._buffer = bytearray(HASH_READ)

    def offer(self, chunks: list, offset: int, written: int) -> None:
        """`written` bytes of `chunks` are on disk at `offset`: keep them for the hash if it
        will soon reach them (no read back), within HOLD bytes in all."""
        near = self.hashed <= offset < self.hashed + HOLD
        fits = 0 < written <= HOLD - self._held_bytes
        if near and fits and offset not in self._held:
            self._held[offset] = (chunks, written)
            self._held_bytes += written
        self._moved.set()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    async def run(self) -> None:
        while self.hashed < self._plan.size:
            frontier = self._plan.frontier()
            if self.hashed >= frontier:
                self._moved.clear()
                await self._moved.wait()
            elif batches := self._take_held(frontier):
                await self._partial.run(self._hash_held, batches)
                self.hashed += sum(length for _, length in batches)
            else:
                end = self._read_end(frontier)
                await self._partial.run(self._hash_range, self.hashed, end)
                self.hashed = end

    def _take_held(self, frontier: int) -> list[tuple[list, int]]:
        """The held batches that continue the digest, in order, up to HASH_SIZE bytes."""
        for offset in [o for o in self._held if o < self.hashed]:  # read back meanwhile
            self._held_bytes -= self._held.pop(offset)[1]
        batches, at = [], self.hashed
        while at in self._held and at < frontier and at - self.hashed < HASH_SIZE:
            chunks, length = self._held.pop(at)
            self._held_bytes -= length
            batches.append((chunks, length))
            at += length
        return batches

    def _read_end(self, frontier: int) -> int:
        """Read back up to the next held batch: that one is hashed from memory."""
        ahead = [o for o in self._held if o > self.hashed]
        return min(frontier, self.hashed + HASH_SIZE, *ahead)

    def _hash_held(self, _fd: int, batches: list[tuple[list, int]]) -> None:
        for chunks, length in batches:
            for chunk in chunks:
                view = memoryview(chunk)[:length]
                self._sha.update(view)
                length -= len(view)
                if length <= 0:
                    break

    def _hash_range(self, fd: int, offset: int, end: int) -> None:
        view = memoryview(self._buffer)
        while offset < end:
            count = read_into(fd, view[: min(end - offset, len(view))], offset)
            self._sha.update(view[:count])
            offset += count
