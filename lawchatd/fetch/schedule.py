"""LAWCHATD_RATE_SCHEDULE as written: caps by weekday and hour (parsing and matching only).

`mon-fri 08:00-18:00=10MB; sat,sun=50MB; *=0`: rules separated by `;`, each `WHEN=RATE`. WHEN is
`*`, days (`mon`, `mon-fri`, `fri-mon`, `sat,sun`), a time range `HH:MM-HH:MM` (local time, end
excluded, `22:00-06:00` runs past midnight; the days are those of the moment checked), or days
and a range. The first rule that matches wins; when none does, LAWCHATD_MAX_RATE applies.
lawchatd.downloads.bandwidth applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from lawchatd.fetch.ratelimit import parse_rate

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

