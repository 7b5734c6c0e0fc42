"""FetchOptions: how the engine fetches, with the one set of defaults every user starts from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FetchOptions:
    connections: int = 4  # parallel ranged requests (one, when the server ignores ranges)
    max_retries: int = 8  # failures in a row per connection before the download gives up
    retry_backoff: float = 0.5  # seconds before the first retry; doubles, capped at 30 s
    stall_timeout: float = 20.0  # seconds without a byte before a connection is retried
    connect_timeout: float = 30.0
    record_seconds: float = 0.05  # how often the parts go to the journal (a kill -9 loses this)
    sync_seconds: float = 2.0  # how often an fdatasync makes them durable (a power cut loses this)

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("connections must be at least 1")
        if self.max_retries < 0 or self.retry_backoff < 0 or self.stall_timeout <= 0:
            raise ValueError(
                "retries and backoff cannot be negative, the stall timeout must be > 0"
            )
