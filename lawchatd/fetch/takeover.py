"""The endgame: an idle connection takes over the rest of a part whose connection crawls.

A steal splits only parts worth two connections (plan.MIN_PART), so a connection stuck on a
slow route (1 MB/s while the others get 40) keeps the last MiB of its part, and the whole
download waits for it. Here an idle connection that was much faster takes the rest of such a
part; the slow one sees its part end at its next chunk and stops (its socket is not reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

from lawchatd.fetch.plan import Part, PartPlan

TRUST_AFTER = 1.0  # s a part must have run before its pace says anything
WORTH_ETA = 1.0  # s: a part that ends sooner than this is left alone
SLOWER = 4  # the crawling connection must be this many times slower than the idle one
POLL_SECONDS = 0.2  # how often an idle connection looks again while others still work


@dataclass
class Filling:
    part: Part
    since: float
    done_at_start: int

    def pace(self, now: float) -> float:
        elapsed = now - self.since
        return (self.part.done - self.done_at_start) / elapsed if elapsed > 0 else 0.0


class Paces:
    """The parts being filled right now, and how fast each goes."""

    def __init__(self, plan: PartPlan) -> None:
        self._plan = plan
        self._filling: dict[int, Filling] = {}
        self._ended = asyncio.Event()  # set (and replaced) whenever a connection ends a part

    def start(self, part: Part) -> Filling:
        filling = Filling(part, time.monotonic(), part.done)
        self._filling[id(part)] = filling
        return filling

    def end(self, filling: Filling) -> float:
        """Forget the part; returns its connection's pace, bytes/s."""
        self._filling.pop(id(filling.part), None)
        self._ended.set()
        self._ended = asyncio.Event()
        return filling.pace(time.monotonic())

    async def idle(self) -> None:
        """Wait until another connection ends its part, or a moment to look at the paces."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), POLL_SECONDS)

    def take_over(self, own_pace: float) -> Part | None:
        """The rest of the part that would end last, if its connection is far slower."""
        now = time.monotonic()
        worst: tuple[float, Part] | None = None
        for filling in self._filling.values():
            part = filling.part
            if part.remaining <= 0 or part.done == 0 or now - filling.since < TRUST_AFTER:
                continue
            pace = filling.pace(now)
            if pace * SLOWER > own_pace:
                continue
            eta = part.remaining / pace if pace > 0 else math.inf
            if eta > WORTH_ETA and (worst is None or eta > worst[0]):
                worst = (eta, part)
        return self._plan.take_over(worst[1]) if worst else None
