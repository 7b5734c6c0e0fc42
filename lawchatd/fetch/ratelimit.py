"""One bandwidth cap shared by every connection of every download: a fair token bucket.

Connections call `await limiter.acquire(len(chunk))` after each chunk they read; while they wait
they do not read, so TCP flow control slows the sender down to the cap. Waiters take turns
(FIFO), and each turn buys `quantum` bytes for the connection (the calling task): what it does
not use at once stays its credit for its next chunks. So every connection that wants bytes gets
the same share whatever its chunk sizes, and one that cannot use its share (a slow link, the
tail) is served without waiting behind the rest.

Pay per read of at most `QUANTUM` bytes (`content.read(QUANTUM)`): a 2 MB chunk is paid for in
one lump after it arrived, which makes any 5 s window up to a few % off when several land at
its edges; with quantum-sized reads the bytes let through stay within ~1 % of the cap.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections import deque

QUANTUM = (
    256 << 10
)  # bytes per turn: small for fairness, large for few wake-ups (~500/s at 125 MB/s)
BURST_SECONDS = 0.05  # tokens saved up while idle: keeps any 5 s window within 1 % of the cap

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "bit": 1 / 8,
    "kbit": 1000 / 8,
    "mbit": 1000**2 / 8,
    "gbit": 1000**3 / 8,
    "kbps": 1000 / 8,
    "mbps": 1000**2 / 8,
    "gbps": 1000**3 / 8,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)(?:/s)?\s*$")


def parse_rate(text: str | int | None) -> int | None:
    """`20MB`, `100Mbit`, `1.5 MiB/s` or plain bytes/s -> bytes/s; `0`, empty or None -> None."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise ValueError("a rate is a number of bytes/s or a size like 20MB or 100Mbit")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a rate cannot be negative")
        return text or None
    match = _RATE.match(text)
    if not match:
        if not text.strip():
            return None
        raise ValueError(f"{text!r} is not a rate: use bytes/s or a size like 20MB or 100Mbit")
    number, unit = match.groups()
    if len(unit) == 2 and unit[1] == "b" and unit[0] in "kKmMgG":
        # `Mb` means megabits to some and megabytes to others: make the reader choose.
        raise ValueError(
            f"{text!r} is ambiguous: write {unit[0].upper()}B (bytes) or "
            f"{unit[0].upper()}bit (bits)"
        )
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"{text!r}: unknown unit {unit!r} (use B, KB, MB, GB, MiB, Mbit, Gbit)")
    return round(float(number) * factor) or None


def format_rate(rate: int | None) -> str:
    if not rate:
        return "unlimited"
    for unit, size in (("GB/s", 1000**3), ("MB/s", 1000**2), ("kB/s", 1000)):
        if rate >= size:
            return f"{rate / size:.3g} {unit}"
    return f"{rate} B/s"


class RateLimiter:
    """`await acquire(n)` returns once n bytes fit under the cap; `rate` None = unlimited."""

    def __init__(self, rate: int | None = None, *, quantum: int = QUANTUM) -> None:
        self._rate = rate or None
        self._quantum = quantum
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._queue: deque[asyncio.Future[None]] = deque()
        self._head_wakeup: asyncio.Future[None] | None = None
        self._credit: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self.granted = 0  # bytes let through since start, for tests and progress

    @property
    def rate(self) -> int | None:
        return self._rate

    def set_rate(self, rate: int | None) -> None:
        """Change the cap at once: the waiter at the head recomputes its wait."""
        rate = rate or None
        if rate == self._rate:
            return
        self._refill()
        self._rate = rate
        self._tokens = min(self._tokens, self._capacity())
        if self._head_wakeup and not self._head_wakeup.done():
            self._head_wakeup.set_result(None)

    async def acquire(self, n: int, owner: object | None = None) -> None:
        """Wait until `n` more bytes fit under the cap.

        Credit belongs to `owner` (default: the calling task): call it from the connection's
        own long-lived task, or pass the connection, so a turn's unused bytes are not lost.
        """
        key = owner if owner is not None else asyncio.current_task()
        credit = self._credit.pop(key, 0) if key is not None else 0
        while self._rate and n > credit:
            await self._take(self._quantum)  # one turn, then back of the line
            credit += self._quantum
        # Unlimited: bytes are free, and credit from a capped time is dropped.
        if key is not None and self._rate:
            self._credit[key] = credit - n
        self.granted += n

    def _capacity(self) -> float:
        return max(self._quantum, (self._rate or 0) * BURST_SECONDS)

    def _refill(self) -> float:
        now = time.monotonic()
        if self._rate:
            self._tokens = min(self._capacity(), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._tokens

    async def _take(self, n: int) -> None:
        if not self._rate or (not self._queue and self._refill() >= n):
            self._tokens -= n if self._rate else 0
            return
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        try:
            if self._queue[0] is not turn:
                await turn  # the waiter ahead hands over when it leaves
            while self._rate and (missing := n - self._refill()) > 0:
                self._head_wakeup = loop.create_future()
                timer = loop.call_later(missing / self._rate, _wake, self._head_wakeup)
                try:
                    await self._head_wakeup
                finally:
                    timer.cancel()
            if self._rate:
                self._tokens -= n
        finally:
            self._leave(turn)

    def _leave(self, turn: asyncio.Future[None]) -> None:
        was_head = bool(self._queue) and self._queue[0] is turn
        self._queue.remove(turn)
        if was_head and self._queue:
            _wake(self._queue[0])


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
