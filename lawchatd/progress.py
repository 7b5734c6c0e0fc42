"""ProgressHub: fan-out of the latest state to every WebSocket, with no backlog per client.

Each subscriber holds at most one pending message per message type. A slow client therefore
skips intermediate progress and receives the newest state when it is ready again, and
publishing stays a few dict writes whatever the clients do: a download never waits for them.
"""

from __future__ import annotations

import asyncio


class Subscriber:
    def __init__(self) -> None:
        self._pending: dict[str, dict] = {}
        self._ready = asyncio.Event()

    def offer(self, message: dict) -> None:
        key = message["type"]
        self._pending.pop(key, None)  # re-insert so messages keep the order they changed in
        self._pending[key] = message
        self._ready.set()

    async def next_batch(self) -> list[dict]:
        await self._ready.wait()
        self._ready.clear()
        batch = list(self._pending.values())
        self._pending.clear()
        return batch


class ProgressHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._last: dict[str, dict] = {}

    @property
    def client_count(self) -> int:
        return len(self._subscribers)

    def publish(self, message: dict) -> None:
        key = message["type"]
        if self._last.get(key) == message:
            return  # the reporter ticks while nothing moves (a stall, a backoff): say it once
        self._last[key] = message
        for subscriber in self._subscribers:
            subscriber.offer(message)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
