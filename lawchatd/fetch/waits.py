"""Backoff waits, shown in the progress: phase `retrying` while any connection waits, and why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from lawchatd.errors import in_words
from lawchatd.fetch.fetcher import Counters, with_retries
from lawchatd.fetch.status import Phase

log = logging.getLogger(__name__)
T = TypeVar("T")


class Waits:
    def __init__(
        self,
        phase: Callable[[], str | None],
        set_phase: Callable[[str | None], None],
        running: Callable[[], bool],
        counters: Counters,
        *,
        log_as: str,
    ) -> None:
        self._phase, self._set_phase, self._running = phase, set_phase, running
        self._counters, self._name = counters, log_as
        self._sleepers = 0
        self._phase_before: str | None = None
        self.note: str | None = None  # why the download waits, in words

    async def wait(self, delay: float, exc: BaseException, note: str | None) -> None:
        log.warning("%s: %s; retry in %.1fs", self._name, in_words(exc), delay)
        if not self._sleepers:
            self._phase_before = self._phase()
        self._sleepers += 1
        self.note = note or f"{in_words(exc)}; retrying in {delay:.3g} s"
        self._set_phase(Phase.RETRYING)
        try:
            await asyncio.sleep(delay)
        finally:
            self._sleepers -= 1
            if not self._sleepers and self._running():
                self._set_phase(self._phase_before)

    async def retry(
        self, attempt: Callable[[], Awaitable[T]], max_retries: int, backoff: float
    ) -> T:
        """`attempt()` until it succeeds, waiting between tries; DownloadFailed at the limit."""
        return await with_retries(
            attempt,
            max_retries=max_retries,
            base=backoff,
            backoff=self.wait,
            counters=self._counters,
            failed=lambda why: f"cannot reach the Hub: {why}",
        )
