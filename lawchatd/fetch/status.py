"""What a download is doing, in plain data: the web layer turns a Snapshot into JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    RESOLVING = "resolving"
    DOWNLOADING = "downloading"
    RETRYING = "retrying"
    VERIFYING = "verifying"
    LOADING = "loading"  # the daemon's, after the engine's end: the model is being swapped in


@dataclass(frozen=True)
class Snapshot:
    """One download's state at one moment (variant None: nothing ever ran)."""

    variant: str | None = None
    status: str = Status.IDLE
    phase: str | None = None
    error: str | None = None
    total: int = 0
    done: int = 0
    speed: float = 0.0  # bytes/s, 0.0 unless downloading
    retries: int = 0
    note: str | None = None  # e.g. "rate limited by the Hub, retrying in 2 s"
    max_rate: int | None = None  # the bandwidth cap in effect, bytes/s (None: unlimited)

    @property
    def eta(self) -> float | None:
        if self.status != Status.DOWNLOADING or self.speed <= 0:
            return None
        return round((self.total - self.done) / self.speed, 1)


class SpeedMeter:
    """Bytes per second over the last few seconds of samples."""

    WINDOW = 3.0

    def __init__(self) -> None:
        self._samples: list[tuple[float, int]] = []

    def sample(self, done: int) -> None:
        now = time.monotonic()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.WINDOW:
            self._samples.pop(0)

    def speed(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0
