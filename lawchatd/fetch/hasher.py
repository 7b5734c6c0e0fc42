"""A sha256 that follows the contiguous prefix of finished bytes, reading them back in a thread.

The digest is ready moments after the last byte arrives, and the byte loop never hashes.
"""

from __future__ import annotations

import asyncio
import hashlib

from lawchatd.fetch.partial import PartialFile, read_into
from lawchatd.fetch.plan import PartPlan

HASH_SIZE = 16 << 20  # bytes hashed per thread call: keeps cancellation prompt
HASH_READ = 4 << 20  # one reused read buffer


class FollowingHasher:
    def __init__(self, partial: PartialFile, plan: PartPlan) -> None:
        self._partial = partial
        self._plan = plan
        self._sha = hashlib.sha256()
        self.hashed = 0
        self._moved = asyncio.Event()
        # This hasher's own buffer: a cancelled call may still fill it in its thread, and
        # the hasher is then discarded with it.
        self._buffer = bytearray(HASH_READ)

    def poke(self) -> None:
        """The frontier may have moved."""
        self._moved.set()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    async def run(self) -> None:
        while self.hashed < self._plan.size:
            frontier = self._plan.frontier()
            if self.hashed < frontier:
                length = min(frontier - self.hashed, HASH_SIZE)
                await self._partial.run(self._hash_range, self.hashed, length)
                self.hashed += length
            else:
                self._moved.clear()
                await self._moved.wait()

    def _hash_range(self, fd: int, offset: int, length: int) -> None:
        view = memoryview(self._buffer)
        end = offset + length
        while offset < end:
            count = read_into(fd, view[: min(end - offset, len(view))], offset)
            self._sha.update(view[:count])
            offset += count
