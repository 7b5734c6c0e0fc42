"""A download's row in the store, and the one writer of it.

`RowJournal` is the engine's journal for the daemon: the parts go to the `parts` table, what
the bytes are (sha256, commit, ETag, boot id) to the row. Status changes go through
`transition`, and every write of the row through `RowJournal`; the manager's clean-ups at
start and after a `cleanup` use the same two.
"""

from __future__ import annotations

import time

from lawchatd.fetch import Entry, Status
from lawchatd.state.store import DownloadRow, Store


def transition(row: DownloadRow, status: str, *, error: str | None = None) -> None:
    """The row's status changes here, and only here: the phase ends with the run, the
    times and the size follow the status."""
    now = time.time()
    row.status, row.error = status, error
    if status == Status.DOWNLOADING:
        row.started_at, row.finished_at = now, None
    else:
        row.phase, row.finished_at = None, now
    if status == Status.COMPLETED:
        row.downloaded_size = row.total_size


class RowJournal:
    def __init__(self, store: Store, row: DownloadRow) -> None:
        self._store = store
        self.row = row

    def set_phase(self, phase: str | None) -> None:
        """What the running download does now (no write: the engine's next entry carries it)."""
        self.row.phase = phase

    async def begin(self, size: int) -> None:
        """A run of `size` bytes starts: the row as stored (if any) says what it resumes."""
        if stored := await self._store.get(self.row.variant):
            if stored.status == Status.COMPLETED:  # forced again: none of it is in a .part yet
                stored.downloaded_size = 0
            self.row = stored
        self.row.total_size = size
        transition(self.row, Status.DOWNLOADING)

    async def load(self) -> Entry | None:
        parts = await self._store.parts(self.row.variant)
        row = self.row
        return Entry(
            parts, row.boot_id, row.upstream_sha256, row.commit_sha, row.cdn_etag,
            row.part_identity,
        )  # fmt: skip

    async def save(self, entry: Entry) -> None:
        row = self.row
        row.downloaded_size, row.boot_id = entry.done, entry.boot_id
        row.upstream_sha256, row.commit_sha, row.cdn_etag = entry.sha256, entry.commit, entry.etag
        row.part_identity = entry.identity
        await self._store.save(row, entry.parts)

    async def write(self, *, forget_parts: bool = False) -> None:
        """The row as it is now (its parts too, emptied, when `forget_parts`)."""
        await self._store.save(self.row, [] if forget_parts else None)


async def forget_partial(store: Store, row: DownloadRow) -> None:
    """Its partial file was deleted: nothing is kept to resume from."""
    row.downloaded_size, row.cdn_etag = 0, None
    await RowJournal(store, row).write(forget_parts=True)


async def settle_interrupted(store: Store, row: DownloadRow, status: str) -> None:
    """A run the last process left `downloading` ends as `status` (completed or cancelled)."""
    transition(row, status)
    await RowJournal(store, row).write(forget_parts=status == Status.COMPLETED)
