"""The journal: where the engine keeps which bytes of the `.part` file are done, so that a
cancel, a dropped line, a restart or a kill -9 resumes instead of starting over.

The engine owns what goes in (`Entry`); the caller owns where it goes (`Journal`): the daemon's
SQLite store, a JSON file beside the `.part` (`FileJournal`), or memory (`MemoryJournal`).

Bytes written by a killed process are still in the page cache, so an entry is trusted as long
as the kernel has not rebooted: each entry carries the boot id, and after a reboot only the
`synced` counts (written after an fdatasync) are trusted.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from lawchatd.fetch.plan import Part

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Entry:
    """What the bytes of a `.part` file are: enough to go on where they end."""

    parts: list[Part] = field(default_factory=list)  # empty: nothing worth keeping
    boot_id: str | None = None  # the kernel boot whose page cache holds the unsynced bytes
    sha256: str | None = None  # the upstream's sha256 of the file the bytes belong to
    commit: str | None = None  # the Hub commit they were resolved at
    etag: str | None = None  # the server's own strong ETag of those bytes (If-Range)
    identity: str | None = None  # the `.part` they are in (fetch/identity.py): inode, size, mtime

    @property
    def done(self) -> int:
        return sum(p.done for p in self.parts)


class Journal(Protocol):
    """Keeps the engine's latest Entry. `save` is called up to ~20 times a second, and only
    when something changed; `load` once, before the first byte."""

    async def load(self) -> Entry | None: ...

    async def save(self, entry: Entry) -> None: ...


def boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def trusted(stored: list[Part], recorded_boot: str | None) -> list[Part]:
    """The stored parts as far as they can be trusted in this boot."""
    if recorded_boot is None or recorded_boot != boot_id():
        for part in stored:
            part.done = part.synced
    return stored


class MemoryJournal:
    """A journal that lives as long as the object: resumes within one process."""

    def __init__(self, entry: Entry | None = None) -> None:
        self.entry = entry

    async def load(self) -> Entry | None:
        return _copy(self.entry) if self.entry else None

    async def save(self, entry: Entry) -> None:
        self.entry = _copy(entry)


class FileJournal:
    """A journal in a small JSON file (beside the `.part`, say), replaced atomically.

    Not fsynced: after a power cut it may be older than the bytes, which only loses work
    (the boot id makes the engine trust only the synced counts then); never newer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # Saves overlap (the record and sync loops; a cancelled save's thread still writing while
        # the stop saves again): one writer at a time, and an older entry never lands last.
        self._writing = threading.Lock()
        self._asked = 0  # save calls numbered on the event loop
        self._written = 0  # the newest number on disk

    async def load(self) -> Entry | None:
        return await asyncio.to_thread(self._read)

    async def save(self, entry: Entry) -> None:
        self._asked += 1
        await asyncio.to_thread(self._write, entry, self._asked)

    def forget(self) -> None:
        """Delete the file (its fetch is published, or given up). A file operation: call it
        in a thread (`asyncio.to_thread(journal.forget)`)."""
        self.path.unlink(missing_ok=True)

    def _read(self) -> Entry | None:
        try:
            data = json.loads(self.path.read_text())
            parts = [Part(**p) for p in data.pop("parts")]
            return Entry(parts=parts, **data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None  # none, or unreadable: start over, which is always safe

    def _write(self, entry: Entry, number: int) -> None:
        with self._writing:
            if number < self._written:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text(json.dumps(asdict(entry)))
            os.replace(temporary, self.path)
            self._written = number


def _copy(entry: Entry) -> Entry:
    parts = [Part(p.start, p.end, p.done, p.synced) for p in entry.parts]
    return Entry(parts, entry.boot_id, entry.sha256, entry.commit, entry.etag, entry.identity)
