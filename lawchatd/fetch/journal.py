"""Progress records: often without fsync (a killed process loses at most one interval), and
less often after an fdatasync (what a power cut keeps).

Bytes written by a killed process are still in the page cache, so a record is trusted as long
as the kernel has not rebooted: each record carries the boot id, and after a reboot only the
`synced` counts (written after an fdatasync) are trusted.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from lawchatd.fetch.errors import DownloadFailed
from lawchatd.fetch.fetcher import Link
from lawchatd.fetch.partial import PartialFile
from lawchatd.fetch.plan import PartPlan
from lawchatd.state.store import DownloadRow, Part, Store

RECORD_SECONDS = 0.05  # a kill -9 loses about this much transfer (and what is in flight)
SYNC_SECONDS = 2.0  # a power cut loses at most about this much (plus the fsync itself)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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


class Journal:
    def __init__(
        self, store: Store, row: DownloadRow, plan: PartPlan, partial: PartialFile, link: Link
    ) -> None:
        self._store, self._row, self._plan, self._partial = store, row, plan, partial
        self._link = link
        self._boot = boot_id()
        self._saved: tuple[list[Part], DownloadRow] | None = None  # what the store holds

    def follow(self, plan: PartPlan) -> None:
        self._plan = plan  # a restart or a switch to one stream made a new plan

    async def record(self) -> None:
        """Save what pwritev has returned for: the page cache holds it."""
        if self._partial.unlinked():
            raise DownloadFailed(
                f"the partial file {self._partial.path} was deleted by another program while "
                "downloading; download again to start over"
            )
        snapshot = self._plan.snapshot()
        self._row.downloaded_size = sum(p.done for p in snapshot)
        self._row.boot_id = self._boot
        self._row.cdn_etag = self._link.etag  # the If-Range validator of the bytes on disk
        # A stall or a long Retry-After changes nothing: no transaction 20 times a second.
        saved = (snapshot, replace(self._row, updated_at=None))
        if saved == self._saved:
            return
        await self._store.save(self._row, snapshot)
        self._saved = saved

    async def sync(self) -> None:
        """fdatasync, then mark what it covered as durable."""
        before = {p.start: p.done for p in self._plan.parts}
        plan = self._plan
        await self._partial.sync()
        if plan is not self._plan:
            return
        for part in plan.parts:
            part.synced = max(part.synced, min(part.done, before.get(part.start, 0)))
        await self.record()

    async def run(self) -> None:
        syncing = asyncio.create_task(self._sync_loop())
        try:
            while True:
                await asyncio.sleep(RECORD_SECONDS)
                await self.record()
                if syncing.done():
                    syncing.result()  # an fdatasync error ends the download
        finally:
            syncing.cancel()

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            await self.sync()
