"""The history of downloads: one line per run that ended (when, who, outcome, how long, how
fast), so the office sees more than the last one.

Kept as JSON lines in the data folder, apart from the download rows (which say where each
variant stands now, not what happened before): appended when a run ends, read newest first,
trimmed to the last `KEEP` runs when it grows past twice that.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
KEEP = 200


@dataclass(frozen=True)
class Run:
    variant: str
    started_by: str  # the key's name ("admin" without keys), or "lawchatd" for a resume at start
    outcome: str  # completed | error | cancelled | interrupted (the daemon stopped)
    started_at: float  # Unix time
    finished_at: float
    bytes: int  # fetched in this run (a resumed run counts only its own bytes)
    error: str | None = None

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    def as_json(self) -> dict:
        seconds = self.seconds
        return {
            **asdict(self),
            "duration_seconds": round(seconds, 1),
            "average_speed": round(self.bytes / seconds, 1) if seconds > 0 else 0.0,
        }


class History:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()  # one writer at a time (append and trim)

    async def add(self, run: Run) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, run)
            except OSError as exc:  # history is a convenience: a full disk must not fail a run
                log.warning("could not record the download of %s in %s: %s", run.variant,
                            self._path, exc)  # fmt: skip

    async def recent(self, limit: int = 50) -> list[dict]:
        """The last ``limit`` runs, newest first."""
        runs = await asyncio.to_thread(self._read)
        return [run.as_json() for run in reversed(runs[-limit:])]

    def _append(self, run: Run) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(run)) + "\n")
        runs = self._read()  # a few hundred short lines, once per download, in a thread
        if len(runs) > 2 * KEEP:
            runs = runs[-KEEP:]
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in runs), "utf-8")
            tmp.replace(self._path)

    def _read(self) -> list[Run]:
        try:
            lines = self._path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        runs = []
        for line in lines:
            try:
                runs.append(Run(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut by a power loss
        return runs
