"""ProgressHub: fan-out of the latest state to every WebSocket, with no backlog per client.

Each subscriber holds at most one pending message per message type. A slow client therefore
skips intermediate progress and receives the newest state when it is ready again, and
publishing stays a few dict writes whatever the clients do: a download never waits for them.
Each message is encoded to JSON once, however many clients receive it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    message: dict
    text: str = field(init=False)  # the JSON every client is sent

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", json.dumps(self.message))


class Subscriber:
    def __init__(self) -> None:
        self._pending: dict[str, Published] = {}
        self._ready = asyncio.Event()

    def offer(self, published: Published) -> None:
        key = published.message["type"]
        self._pending.pop(key, None)  # re-insert so messages keep the order they changed in
        self._pending[key] = published
        self._ready.set()

    async def next_batch(self) -> list[Published]:
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
        published = Published(message)
        for subscriber in self._subscribers:
            subscriber.offer(published)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
