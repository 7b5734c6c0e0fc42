"""PartPlan: which bytes are where, and which connection fills what. Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass

# Parts smaller than this are not worth their own connection: the initial split and an idle
# connection's steal (half of the largest running part) both respect it.
MIN_PART = 4 << 20
# A download's parts: several per connection, taken in file order, so that the finished prefix
# (what the sha256 can follow) trails the fastest bytes by a few parts, not by 3/4 of the file
# (with one part per connection, all end together and most of the hash waited for the end).
PARTS_PER_CONNECTION = 8
TAPER = 4  # the last round's parts are this much smaller (see split)


@dataclass
class Part:
    """Bytes [start, end) of the file; `done` of them are on disk from `start` on."""

    start: int
    end: int
    done: int = 0
    synced: int = 0  # of `done`, bytes an fdatasync has made durable (a power cut keeps them)

    @property
    def offset(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.offset


def tiles(parts: list[Part], size: int) -> bool:
    """The parts cover [0, size) in order, without gap or overlap."""
    if not parts or parts[0].start != 0 or parts[-1].end != size:
        return False
    return all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))


class PartPlan:
    def __init__(self, size: int, parts: list[Part]) -> None:
        self.size = size
        self.parts = parts
        self.busy: set[int] = set()  # starts of parts a connection is filling

    @classmethod
    def split(cls, size: int, connections: int, per_connection: int = 1) -> PartPlan:
        """Parts in file order, `per_connection` for each connection (none under MIN_PART).
        With several per connection, the last round's parts are cut TAPER times finer: the
        connections end together, and what they wrote ahead of the hash is hashed after the
        last byte (3 parts of 32 MiB for 1 GiB over 4 connections: 70 ms at 1 Gbit/s)."""
        count = max(1, min(connections * per_connection, size // MIN_PART or 1))
        step = -(-size // count) or 1
        starts = list(range(0, size, step))
        if per_connection > 1 and len(starts) > connections > 1:
            last_round = starts[-connections]
            fine = max(MIN_PART, step // TAPER)
            finer = list(range(last_round, size, fine))
            if len(finer) > 1 and size - finer[-1] < MIN_PART:
                finer.pop()  # a short remainder goes with the part before it
            starts = starts[:-connections] + finer
        return cls(size, [Part(a, b) for a, b in zip(starts, [*starts[1:], size], strict=False)])

    @classmethod
    def resume(cls, size: int, stored: list[Part], on_disk: int | None) -> PartPlan | None:
        """The stored parts, never trusted past what the file holds; None if unusable."""
        if on_disk is None or not tiles(stored, size):
            return None
        for part in stored:
            part.done = max(0, min(part.done, on_disk - part.start, part.end - part.start))
            part.synced = min(part.synced, part.done)
        return cls(size, stored)

    @property
    def done(self) -> int:
        return sum(p.done for p in self.parts)

    @property
    def complete(self) -> bool:
        return all(p.remaining <= 0 for p in self.parts)

    def frontier(self) -> int:
        """The end of the contiguous prefix of finished bytes (what a hasher may read)."""
        for part in self.parts:  # parts tile the file in order
            if part.remaining > 0:
                return part.offset
        return self.size

    def one_stream(self) -> PartPlan:
        """One part for the whole file, done up to the frontier (for a server without ranges)."""
        synced = 0
        for part in self.parts:  # the durable prefix carries over, for a power cut
            synced = part.start + part.synced
            if part.synced < part.end - part.start:
                break
        frontier = self.frontier()
        return PartPlan(self.size, [Part(0, self.size, frontier, min(synced, frontier))])

    def snapshot(self) -> list[Part]:
        return [Part(p.start, p.end, p.done, p.synced) for p in self.parts]

    def claim(self) -> Part | None:
        """Work for an idle connection: an unclaimed part, else half of the largest running."""
        for part in self.parts:
            if part.remaining > 0 and part.start not in self.busy:
                self.busy.add(part.start)
                return part
        running = [p for p in self.parts if p.start in self.busy and p.remaining > 2 * MIN_PART]
        if not running:
            return None
        largest = max(running, key=lambda p: p.remaining)
        middle = largest.offset + largest.remaining // 2
        stolen = Part(middle, largest.end)
        largest.end = middle  # its connection sees the new end and stops there
        self.parts.insert(self.parts.index(largest) + 1, stolen)
        self.busy.add(stolen.start)
        return stolen

    def take_over(self, part: Part) -> Part | None:
        """The whole rest of a running part, for another connection (takeover.py)."""
        if part.remaining <= 0 or part.done == 0:  # a new part must not share a start
            return None
        rest = Part(part.offset, part.end)
        part.end = part.offset  # its connection sees its part end and stops
        self.parts.insert(self.parts.index(part) + 1, rest)
        self.busy.add(rest.start)
        return rest

    def release(self, part: Part) -> None:
        self.busy.discard(part.start)

    def record(self, part: Part, written: int) -> int:
        """Count bytes written at `part.offset`; returns how many belonged to this part.

        A steal may have moved the part's end below the batch: the extra bytes belong to
        the new part (which writes the same bytes again) and must not be counted twice.
        """
        counted = max(0, min(written, part.end - part.offset))
        part.done += counted
        return counted
