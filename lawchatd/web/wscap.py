"""How many `/ws/progress` sockets may be open: in total and per client address.

A WebSocket holds its connection for as long as the client likes, and the connection cap
(process/httpserver.py) cannot evict it: 256 of them used to take every slot, and `/healthz`
and every other request answered 503 until they left. The total is kept to a quarter of
LAWCHATD_MAX_CONNECTIONS, so three quarters always stay for short requests; one address may
hold a quarter of that total (a dashboard in a few tabs needs far fewer), so one client cannot
take the sockets everyone else's dashboard needs. Past either, the upgrade is refused with 503
before it happens (the dashboard tries again a little later).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from lawchatd.errors import TransientError

MIN_PER_ADDRESS = 4


class TooManySockets(TransientError):
    """The live-progress sockets are all taken (503, try again later)."""

    retry_after = 10


class SocketCap:
    def __init__(self, max_connections: int) -> None:
        self.total = max(MIN_PER_ADDRESS, max_connections // 4)
        self.per_address = max(MIN_PER_ADDRESS, self.total // 4)
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return self._open.total()

    @contextlib.contextmanager
    def hold(self, address: str | None) -> Iterator[None]:
        """A slot for one socket from `address` while the block runs, or TooManySockets."""
        address = address or "unknown"
        if self.open >= self.total:
            raise TooManySockets(
                f"Too many live progress connections are open ({self.total}); try again later"
            )
        if self._open[address] >= self.per_address:
            raise TooManySockets(
                f"This computer already has {self.per_address} live progress connections "
                "open; close a dashboard tab or try again later"
            )
        self._open[address] += 1
        try:
            yield
        finally:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]
