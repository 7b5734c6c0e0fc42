"""Requests waiting for a slot, one line per caller (the key a request came with).

First-come would let one person's script holding 20 queued requests take every slot while a
colleague waits behind all of them. Instead, a free slot goes to the caller with the fewest
requests already in slots; among equals, to the one served longest ago (round robin). Within
one caller's line, requests keep their order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar


class Owned(Protocol):
    owner: str


T = TypeVar("T", bound=Owned)


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._lines: dict[str, deque[T]] = {}
        self._served: dict[str, int] = {}  # caller -> the turn it was last given a slot
        self._turn = 0

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __bool__(self) -> bool:
        return bool(self._lines)

    def __iter__(self) -> Iterator[T]:
        for line in list(self._lines.values()):
            yield from line

    def append(self, item: T) -> None:
        self._lines.setdefault(item.owner, deque()).append(item)

    def appendleft(self, item: T) -> None:
        """Back at the head of its caller's line (a preempted request goes on first)."""
        self._lines.setdefault(item.owner, deque()).appendleft(item)

    def head(self, running: Mapping[str, int]) -> T | None:
        """The request whose turn it is, given how many each caller has in slots."""
        if not self._lines:
            return None
        owner = min(self._lines, key=lambda o: (running.get(o, 0), self._served.get(o, -1)))
        return self._lines[owner][0]

    def pop(self, item: T) -> None:
        """``item`` (the head of its line) takes a slot."""
        line = self._lines[item.owner]
        assert line[0] is item
        line.popleft()
        if not line:
            del self._lines[item.owner]
        self._turn += 1
        self._served[item.owner] = self._turn

    def remove_if(self, gone: Callable[[T], bool]) -> None:
        for owner, line in list(self._lines.items()):
            kept = deque(item for item in line if not gone(item))
            if kept:
                self._lines[owner] = kept
            else:
                del self._lines[owner]

    def clear(self) -> list[T]:
        """Every waiting request, removed."""
        items = list(self)
        self._lines.clear()
        return items
