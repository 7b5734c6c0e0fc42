"""The distributions operators graph: chat latency, time to first token, generation speed
and download time, as prometheus_client histograms.

Counters and gauges are read from the live objects at scrape time (`web/routes/metrics.py`);
a distribution cannot be rebuilt from a total, so it is observed where the thing happens and
held by whoever observes it (the chat routes, the download manager). No histogram joins
prometheus_client's global registry: two daemons in one process (tests) keep their own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from lawchatd.modelhost.chat_types import Chunk

# A 2-core CPU answers in seconds to minutes; waiting for a model load counts too.
CHAT_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_TOKEN_SECONDS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
# A 7B model on 2 cores makes a few tokens a second; a small one or a GPU tens.
TOKENS_PER_SECOND = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100)
# Multi-GB files: a minute on a fast line, hours on a slow or capped one.
DOWNLOAD_SECONDS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)


def _histogram(name: str, help_text: str, buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, help_text, buckets=buckets, registry=None)


def download_seconds() -> Histogram:
    return _histogram(
        "lawchatd_download_duration_seconds",
        "Seconds from the start of a download run to its verified file (a resumed download "
        "counts from its resume).",
        DOWNLOAD_SECONDS,
    )


class ChatTimings:
    """Times answers as they stream past; only what happened is observed (a refused request
    has no first token, a cancelled one no duration)."""

    def __init__(self) -> None:
        self.request_seconds = _histogram(
            "lawchatd_chat_request_duration_seconds",
            "Seconds from a chat request reaching the model host to its last token.",
            CHAT_SECONDS,
        )
        self.first_token_seconds = _histogram(
            "lawchatd_chat_time_to_first_token_seconds",
            "Seconds from a chat request reaching the model host to its first token "
            "(waiting for the model and reading the prompt included).",
            FIRST_TOKEN_SECONDS,
        )
        self.tokens_per_second = _histogram(
            "lawchatd_chat_completion_tokens_per_second",
            "Generation speed of an answer: completion tokens after the first, per second "
            "after the first.",
            TOKENS_PER_SECOND,
        )

    async def observe(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """`chunks`, unchanged; closing this closes `chunks` (the host stops generating)."""
        started = time.monotonic()
        first: float | None = None
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                now = time.monotonic()
                if first is None:
                    first = now
                    self.first_token_seconds.observe(now - started)
                if chunk.usage is not None:  # the last piece
                    self.request_seconds.observe(now - started)
                    tokens = chunk.usage.completion_tokens
                    if tokens > 1 and now > first:
                        self.tokens_per_second.observe((tokens - 1) / (now - first))
                yield chunk

    def collect(self) -> Iterable[Metric]:
        for histogram in (self.request_seconds, self.first_token_seconds, self.tokens_per_second):
            yield from histogram.collect()
