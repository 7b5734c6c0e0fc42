"""What the model host counts for /metrics: totals since the start, never reset."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    loads_total: int = 0
    load_failures: int = 0
    load_seconds: float | None = None  # the last good load's
    chat_requests: int = 0  # accepted: queued in an engine
    chat_rejected: int = 0  # refused before that (no model, queue full, waited too long)
    chat_failures: int = 0
    chat_cancelled: int = 0
    chat_seconds: float = 0.0
    completion_tokens: int = 0
