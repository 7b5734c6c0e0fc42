"""Recorder: puts the plan into the journal often without fsync (a killed process loses at most
one interval), and less often after an fdatasync (what a power cut keeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lawchatd.fetch.errors import DownloadFailed, RestartFromZero
from lawchatd.fetch.fetcher import Link
from lawchatd.fetch.identity import PartIdentity
from lawchatd.fetch.journal import Entry, Journal, boot_id
from lawchatd.fetch.options import FetchOptions
from lawchatd.fetch.partial import PartialFile
from lawchatd.fetch.plan import PartPlan


class Upstream:
    """What the bytes are of: the upstream's sha256 and commit (None until resolved)."""

    def __init__(self, sha256: str | None = None, commit: str | None = None) -> None:
        self.sha256, self.commit = sha256, commit


class Recorder:
    def __init__(
        self,
        journal: Journal,
        plan: Callable[[], PartPlan | None],
        partial: PartialFile,
        link: Link,
        upstream: Upstream,
        options: FetchOptions,
    ) -> None:
        self._journal, self._plan, self._partial, self._link = journal, plan, partial, link
        self._upstream, self._options = upstream, options
        self._boot = boot_id()
        self._saved: Entry | None = None  # what the journal holds
        # An fdatasync failed (EIO): the kernel may have dropped the dirty pages' errors and
        # kept them readable in the page cache, so only what an earlier one synced is trusted.
        self._sync_failed = False

    def entry(self, *, settled: bool = False) -> Entry:
        """`settled`: every write has returned (the run ended), so the file's size and mtime
        are final."""
        plan = self._plan()  # the run's plan: a restart or a switch to one stream makes a new one
        parts = plan.snapshot() if plan else []
        st = self._partial.stat() if plan else None  # after the snapshot: it covers its writes
        if st and _shortened(parts, st.st_size):
            parts = []  # another program cut the file: none of it is trusted
        if self._sync_failed:
            for part in parts:
                part.done = part.synced
        return Entry(
            parts=parts,
            boot_id=self._boot,
            sha256=self._upstream.sha256,
            commit=self._upstream.commit,
            etag=self._link.etag,  # the If-Range validator of the bytes on disk
            identity=PartIdentity.of(st, settled=settled).text() if st else None,
        )

    async def record(self, *, always: bool = False) -> None:
        """Save what pwritev has returned for: the page cache holds it. `always`: even when
        nothing changed (the caller's own record, its phase say, goes with it)."""
        if self._plan() is not None and self._partial.unlinked():
            raise DownloadFailed(
                f"the partial file {self._partial.path} was deleted by another program while "
                "downloading; download again to start over"
            )
        plan, entry = self._plan(), self.entry()
        await self.save(entry, always=always)
        if plan is not None and plan.done and not entry.parts:
            raise RestartFromZero(
                "the partial file was shortened by another program while downloading"
            )

    async def save(self, entry: Entry, *, always: bool = False) -> None:
        # A stall or a long Retry-After changes nothing: no transaction 20 times a second.
        if entry == self._saved and not always:
            return
        await self._journal.save(entry)
        self._saved = entry

    async def sync(self) -> None:
        """fdatasync, then mark what it covered as durable."""
        plan = self._plan()
        if plan is None:
            return
        before = {p.start: p.done for p in plan.parts}
        try:
            await self._partial.sync()
        except OSError as exc:
            self._sync_failed = True  # the download ends here, keeping only the synced bytes
            raise DownloadFailed(
                f"the disk reported an error while saving {self._partial.path} "
                f"({exc.strerror or exc}); the bytes since the last good save will be "
                "downloaded again: check the disk, then download again"
            ) from exc
        if plan is not self._plan():
            return
        for part in plan.parts:
            part.synced = max(part.synced, min(part.done, before.get(part.start, 0)))
        await self.record()

    async def run(self) -> None:
        syncing = asyncio.create_task(self._sync_loop())
        try:
            while True:
                await asyncio.sleep(self._options.record_seconds)
                await self.record()
                if syncing.done():
                    syncing.result()  # an fdatasync error ends the download
        finally:
            syncing.cancel()

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.sync_seconds)
            await self.sync()


def _shortened(parts: list, size: int) -> bool:
    """Bytes counted as written lie past the end of the file: someone truncated it."""
    return any(p.done and p.start + p.done > size for p in parts)
