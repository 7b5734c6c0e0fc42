"""One load at a time: the only place that knows "a model is loading".

Two policies. A user's `POST /models/load` is refused while a load runs or waits its turn
(409: the user sees it and tries again). A finished download's autoload, the restore at
start and a keep-alive wake-up wait their turn instead: nobody is there to try again.
Chat requests never take the lock; a request with no model waits for the load that runs
to end (`ended`), then looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lawchatd.modelhost.errors import LoadInProgress

BUSY = "another model is being loaded; try again when it is ready"


class LoadLock:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._queued = 0  # loads waiting their turn
        self._ended = asyncio.Event()  # set, then replaced, each time a load ends
        self.variant: str | None = None  # the one loading now
        self.last_error: str | None = None  # why the last load failed; cleared by a good one

    @property
    def busy(self) -> bool:
        """A load runs or waits: from the first step of `hold` to the last one's end."""
        return self._lock.locked() or self._queued > 0

    def hold(
        self, variant: str | None, *, wait: bool
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the lock while loading ``variant`` (None: no load, only none may start).
        ``wait=False`` raises LoadInProgress at
        once when the lock is busy; ``wait=True`` queues behind the loads before it."""
        if not wait and self.busy:
            raise LoadInProgress(BUSY)
        return self._held(variant)

    @contextlib.asynccontextmanager
    async def _held(self, variant: str | None) -> AsyncIterator[None]:
        # Counted before the first await: whoever looks next sees the lock busy.
        self._queued += 1
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting: it ends without loading
            self._queued -= 1
            self._end()
            raise
        self._queued -= 1
        self.variant = variant
        try:
            yield
        finally:
            self.variant = None
            self._lock.release()
            self._end()

    def _end(self) -> None:
        ended, self._ended = self._ended, asyncio.Event()
        ended.set()

    async def ended(self) -> None:
        """Return when the load running now (or the next one to run) ends; whoever waits
        looks again at what it waits for (it may be a load that gave up waiting its turn)."""
        await self._ended.wait()
