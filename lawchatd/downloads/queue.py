"""The variants waiting behind the running download, in order, kept in the store.

The list in memory is the truth while the daemon runs; every change is written at once, so a
restart finds the same queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lawchatd.state.store import Store


@dataclass(frozen=True)
class Queued:
    variant: str
    force: bool = False


class DownloadQueue:
    def __init__(self, store: Store, on_change: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._on_change = on_change
        self._entries: list[Queued] = []

    async def load(self) -> None:
        self._entries = [Queued(v, f) for v, f in await self._store.queued()]

    @property
    def entries(self) -> list[Queued]:
        return list(self._entries)

    def position(self, variant: str) -> int | None:
        """1 for the next to start; None when not queued."""
        for number, entry in enumerate(self._entries, start=1):
            if entry.variant == variant:
                return number
        return None

    async def add(self, variant: str, force: bool) -> int:
        """Queue `variant` at the end (or keep its place); returns its position."""
        if (place := self.position(variant)) is not None:
            return place
        await self._save([*self._entries, Queued(variant, force)])
        return len(self._entries)

    async def remove(self, variant: str) -> bool:
        kept = [e for e in self._entries if e.variant != variant]
        if len(kept) == len(self._entries):
            return False
        await self._save(kept)
        return True

    async def pop(self) -> Queued | None:
        if not self._entries:
            return None
        first = self._entries[0]
        await self._save(self._entries[1:])
        return first

    async def _save(self, entries: list[Queued]) -> None:
        await self._store.set_queue([(e.variant, e.force) for e in entries])
        self._entries = entries  # only once stored: memory never claims what a restart loses
        self._on_change()
