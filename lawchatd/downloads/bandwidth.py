"""LAWCHATD_RATE_SCHEDULE: caps by weekday and hour, and the controller that applies them.

`mon-fri 08:00-18:00=10MB; sat,sun=50MB; *=0`: rules separated by `;`, each `WHEN=RATE`. WHEN is
`*`, days (`mon`, `mon-fri`, `fri-mon`, `sat,sun`), a time range `HH:MM-HH:MM` (local time, end
excluded, `22:00-06:00` runs past midnight; the days are those of the moment checked), or days
and a range. The first rule that matches wins; when none does, LAWCHATD_MAX_RATE applies.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from lawchatd.fetch.ratelimit import RateLimiter, format_rate, parse_rate

log = logging.getLogger(__name__)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class Rule:
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: int  # minutes since midnight
    end: int  # minutes since midnight, end excluded; end < start wraps past midnight
    rate: int | None
    text: str

    def matches(self, moment: datetime) -> bool:
        if moment.weekday() not in self.days:
            return False
        minute = moment.hour * 60 + moment.minute
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@dataclass(frozen=True)
class Schedule:
    rules: tuple[Rule, ...]
    text: str

    def rule_at(self, moment: datetime) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(moment)), None)


def parse_schedule(text: str | None) -> Schedule | None:
    if text is None or not text.strip():
        return None
    rules = tuple(_parse_rule(part.strip()) for part in text.split(";") if part.strip())
    return Schedule(rules, text.strip())


def _parse_rule(text: str) -> Rule:
    when, sep, rate_text = text.rpartition("=")
    if not sep or not when.strip() or not rate_text.strip():
        raise ValueError(f"schedule rule {text!r}: write WHEN=RATE, e.g. mon-fri 08:00-18:00=10MB")
    try:
        rate = parse_rate(rate_text.strip())
    except ValueError as exc:
        raise ValueError(f"schedule rule {text!r}: {exc}") from None
    days, start, end = frozenset(range(7)), 0, 24 * 60
    for word in when.lower().split():
        if word == "*":
            continue
        if ":" in word:
            start, end = _parse_range(word, text)
        else:
            days = _parse_days(word, text)
    return Rule(days, start, end, rate, text)


def _parse_days(word: str, rule: str) -> frozenset[int]:
    days: set[int] = set()
    for item in word.split(","):
        first, _, last = item.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"schedule rule {rule!r}: {item!r} is not a day or range like mon-fri")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(i % 7 for i in range(a, b + 1 if b >= a else b + 8))
    return frozenset(days)


def _parse_range(word: str, rule: str) -> tuple[int, int]:
    first, sep, last = word.partition("-")
    minutes = [_minutes(part) for part in (first, last)] if sep else [None]
    if None in minutes or minutes[0] == minutes[1]:
        raise ValueError(f"schedule rule {rule!r}: {word!r} is not a time range like 08:00-18:00")
    return minutes[0], minutes[1]


def _minutes(text: str) -> int | None:
    match = _TIME.match(text)
    if not match:
        return None
    hours, minutes = int(match[1]), int(match[2])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        return None
    return hours * 60 + minutes


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
