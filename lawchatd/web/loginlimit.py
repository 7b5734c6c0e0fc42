"""Wrong API keys per client address: a few are mistakes, many are guessing."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

MAX_CLIENTS = 10_000  # remembered addresses; a flood of them forgets the stalest first


class FailureLimiter:
    """At most `limit` failures per `window` seconds per client; then wait (429)."""

    def __init__(
        self, limit: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int:
        """Seconds this client must wait before trying again; 0 when it may try now."""
        failures = self._failures.get(client)
        if not failures or len(failures) < self.limit:
            return 0
        wait = failures[0] + self.window - self._clock()
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= MAX_CLIENTS:
            self._forget_stale()
        self._failures.setdefault(client, deque(maxlen=self.limit)).append(self._clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _forget_stale(self) -> None:
        now = self._clock()
        for client in [c for c, f in self._failures.items() if f[-1] + self.window < now]:
            del self._failures[client]
        while len(self._failures) >= MAX_CLIENTS:  # all recent: drop the oldest entries
            del self._failures[next(iter(self._failures))]
