"""The download cap in effect: the controller that applies LAWCHATD_MAX_RATE, the schedule
(lawchatd.fetch.schedule) and a run-time override to the engine's RateLimiter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from lawchatd.fetch.ratelimit import RateLimiter, format_rate
from lawchatd.fetch.schedule import Rule, Schedule

log = logging.getLogger(__name__)

class Bandwidth:
    """The cap in effect: a run-time override, else the schedule's rule, else the setting.

    An override (PUT /downloads/bandwidth) holds until the schedule moves to another rule, so
    "unlimited tonight" does not outlive the night; without a schedule it holds until restart.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        max_rate: int | None = None,
        schedule: Schedule | None = None,
        clock: Callable[[], datetime] = datetime.now,
        on_change: Callable[[dict], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.max_rate = max_rate or None
        self.schedule = schedule
        self._clock = clock
        self._on_change = on_change
        self._override: tuple[int | None] | None = None
        self._override_rule: Rule | None = None
        self.source = "setting"
        self.update()

    @property
    def rate(self) -> int | None:
        return self.limiter.rate

    def set_override(self, rate: int | None) -> None:
        self._override = (rate or None,)
        self._override_rule = self._rule_now()
        self.update()

    def update(self) -> int | None:
        """Apply whatever is in effect now; called at each minute by `run`."""
        rule = self._rule_now()
        if self._override is not None and rule != self._override_rule:
            self._override = None  # the schedule moved on: so does the cap
        if self._override is not None:
            rate, self.source = self._override[0], "override"
        elif rule is not None:
            rate, self.source = rule.rate, "schedule"
        else:
            rate, self.source = self.max_rate, "setting"
        if rate != self.limiter.rate:
            log.info("download bandwidth: %s (%s)", format_rate(rate), self.source)
            self.limiter.set_rate(rate)
            if self._on_change:
                self._on_change(self.status())
        return rate

    def status(self) -> dict:
        return {
            "max_rate": self.rate,
            "source": self.source,
            "schedule": self.schedule.text if self.schedule else None,
        }

    async def run(self) -> None:
        """Rules change on whole minutes: look again just after each one."""
        while True:
            now = self._clock()
            next_minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            await asyncio.sleep((next_minute - now).total_seconds() + 0.05)
            try:
                self.update()
            except Exception:  # a bad clock reading must not end the schedule
                log.exception("bandwidth schedule")

    def _rule_now(self) -> Rule | None:
        return self.schedule.rule_at(self._clock()) if self.schedule else None
