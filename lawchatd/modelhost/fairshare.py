"""Per-caller limits and usage: what each key may take of the model, and what it took.

A caller is a key's name (the web layer decides it and the limits that apply). Two limits,
each optional: requests in flight at once (queued or answering), and tokens (prompt and
completion) spent in the last minute. A request over either is refused with 429 and a
Retry-After: when a slot of its own frees (1 s) or when enough of the last minute's tokens
have aged out. Usage is counted since the daemon started; the audit trail keeps the record."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from lawchatd.modelhost.errors import KeyLimitReached

WINDOW = 60.0  # seconds: tokens per minute


@dataclass(frozen=True)
class Limits:
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None


NO_LIMITS = Limits()


@dataclass
class KeyUsage:
    """One caller's figures since the start (``in_flight`` and the window are now)."""

    requests: int = 0  # accepted: queued in the model's engine
    refused: int = 0  # refused before that (its limits, a full queue, no model)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    limits: Limits = field(default_factory=Limits)
    spent: deque[tuple[float, int]] = field(default_factory=deque)  # (when, tokens)

    def tokens_last_minute(self, now: float) -> int:
        while self.spent and self.spent[0][0] <= now - WINDOW:
            self.spent.popleft()
        return sum(n for _, n in self.spent)

    def as_dict(self, now: float) -> dict[str, int | None]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "in_flight": self.in_flight,
            "tokens_last_minute": self.tokens_last_minute(now),
            "max_concurrent": self.limits.max_concurrent,
            "tokens_per_minute": self.limits.tokens_per_minute,
        }


class FairShare:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.usage: dict[str, KeyUsage] = {}
        self._clock = clock

    def of(self, caller: str) -> KeyUsage:
        return self.usage.setdefault(caller, KeyUsage())

    def figures(self, caller: str) -> dict[str, int | None]:
        """One caller's usage as plain data (zeros for one that has not asked yet)."""
        usage = self.usage.get(caller) or KeyUsage()
        return usage.as_dict(self._clock())

    def enter(self, caller: str, limits: Limits) -> KeyUsage:
        """Count a request in flight, or raise KeyLimitReached (429 + Retry-After)."""
        usage = self.of(caller)
        usage.limits = limits
        if limits.max_concurrent is not None and usage.in_flight >= limits.max_concurrent:
            usage.refused += 1
            raise KeyLimitReached(
                f"The key '{caller}' already has {_requests(usage.in_flight)} running or "
                f"waiting, its limit (max concurrent {limits.max_concurrent}); try again when "
                "one has finished",
                retry_after=1,
            )
        tpm = limits.tokens_per_minute
        if tpm is not None:
            now = self._clock()
            spent = usage.tokens_last_minute(now)
            if spent >= tpm:
                usage.refused += 1
                raise KeyLimitReached(
                    f"The key '{caller}' used {spent} tokens in the last minute, its limit "
                    f"({tpm} tokens per minute); try again in a moment",
                    retry_after=_seconds_until_below(usage.spent, spent - tpm, now),
                )
        usage.in_flight += 1
        return usage

    def leave(self, usage: KeyUsage) -> None:
        usage.in_flight -= 1

    def spend(self, usage: KeyUsage, *, prompt: int = 0, completion: int = 0) -> None:
        usage.prompt_tokens += prompt
        usage.completion_tokens += completion
        if prompt + completion:
            usage.spent.append((self._clock(), prompt + completion))


def _requests(n: int) -> str:
    return f"{n} chat request" if n == 1 else f"{n} chat requests"


def _seconds_until_below(spent: deque[tuple[float, int]], excess: int, now: float) -> int:
    """Whole seconds until more than ``excess`` tokens have left the window."""
    freed = 0
    for when, n in spent:
        freed += n
        if freed > excess:
            return max(1, math.ceil(when + WINDOW - now))
    return math.ceil(WINDOW)
