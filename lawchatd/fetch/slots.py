"""Slots: how many connections the file's server takes now, learnt as the download goes.

Some CDNs and corporate proxies allow a client one (or a few) GETs per file at a time and
answer the others 403, 429, 503 or a reset. Backing off on every connection then leaves gaps
with nothing running. Here a connection takes a slot before it fills parts; a refusal while
another connection of the file is in flight is read as "too many": the limit drops to the
connections that stream, the refused one gives its part back and waits for a slot (no backoff,
no retry counted). After a while the limit goes up by one, a probe; a refused probe doubles the
wait before the next. With no refusal the limit stays at `most`: the normal case is unchanged.

There is always a slot: the limit never drops below one, so one connection can always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

from lawchatd.errors import LawchatdError

log = logging.getLogger(__name__)
PROBE_FIRST = 1.0  # s at a lowered limit before one more connection is tried
PROBE_MOST = 30.0  # s between probes at most, after refused probes
# A connection closed mid-body (its part was split) may still count at the server for a moment:
# at a lowered limit, a lone refusal is tried again this soon, a few times, before the backoff.
QUICK_WAIT = 0.05
QUICK_TRIES = 3


class Crowded(LawchatdError):
    """The server refused this connection while another one is served: wait for a slot
    (caught by the engine's worker; never reaches the user)."""


class Slots:
    def __init__(self, most: int) -> None:
        self.most = most
        self.limit = most
        self.active = 0  # connections holding a slot (some may be idle)
        self.asking = 0  # connections with a request out or a body coming
        self.streaming = 0  # of those, the ones reading a 2xx body right now
        self._changed = asyncio.Event()
        self._probe_at: float | None = None
        self._probe_wait = PROBE_FIRST
        self._probing = False  # the last raise of the limit is not confirmed yet
        self._quick = 0  # lone refusals in a row at a lowered limit

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold a slot for the block (waits while the limit is reached)."""
        if self._quick:
            await asyncio.sleep(QUICK_WAIT * self._quick)
        while self.active >= self.limit:
            self._probe()
            wait = None if self._probe_at is None else max(0.0, self._probe_at - time.monotonic())
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._changed.set()

    @property
    def over(self) -> bool:
        """More connections hold a slot than the server takes now."""
        return self.active > self.limit

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Around one request and its answer."""
        self.asking += 1
        try:
            yield
        finally:
            self.asking -= 1

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Around the reading of a 2xx body: this connection is served."""
        self.streaming += 1
        self._probing = False  # a probe that is served confirms the raised limit
        self._quick = 0
        try:
            yield
        finally:
            self.streaming -= 1

    def refused(self) -> bool:
        """A refusal (403/429/503/reset) reached this connection: True when another one is in
        flight, so that the refusal means "too many" and the caller waits for a slot."""
        if self.asking <= 1:
            if self.limit < self.most and self._quick < QUICK_TRIES:
                self._quick += 1  # likely our own closed connection, not yet seen as closed
                return True
            return False  # alone: a plain error, retried with a backoff
        was = self.limit
        self.limit = max(1, min(self.limit - 1, self.streaming))
        if self._probing:
            self._probe_wait = min(self._probe_wait * 2, PROBE_MOST)
            self._probing = False
        if self.limit < self.most:
            self._probe_at = time.monotonic() + self._probe_wait
        if self.limit != was:
            log.info("the file server refuses a connection: going on with %d", self.limit)
        return True

    def _probe(self) -> None:
        if self._probe_at is None or time.monotonic() < self._probe_at:
            return
        self.limit += 1
        self._probing = True
        self._probe_at = None if self.limit >= self.most else time.monotonic() + self._probe_wait
