"""The running download as an asyncio Task: start, cancel, resume at start, clean up.

One download runs at a time; `_launch` is the single place a Download starts. Variants asked
for with "queue" wait in `queue` (kept in the store); when a download ends, however it ends,
the next one starts (`_start_next`), unless the daemon is stopping.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from lawchatd.config import Settings
from lawchatd.downloads.catalog import Catalog, ModelSpec
from lawchatd.downloads.download import Download, final_path, part_path
from lawchatd.downloads.finals import FinalFiles
from lawchatd.downloads.journal import forget_partial, settle_interrupted
from lawchatd.downloads.queue import DownloadQueue
from lawchatd.errors import Conflict, InsufficientStorage
from lawchatd.fetch import Limiter, Phase, Snapshot, Status
from lawchatd.hub.client import HubClient
from lawchatd.state.histograms import download_seconds
from lawchatd.state.store import DownloadRow, Store

log = logging.getLogger(__name__)

DISK_RESERVE = 64 << 20  # leave room for the database and logs
CANCEL_WAIT = 1.0


class Busy(Conflict):
    def __init__(self, variant: str) -> None:
        super().__init__(f"Another model ({variant}) is currently downloading")
        self.variant = variant


class NotEnoughSpace(InsufficientStorage):
    def __init__(self, needed: int, free: int, where: Path) -> None:
        super().__init__(
            f"Not enough disk space in {where}: the download needs {needed / 1e9:.2f} GB "
            f"({needed} bytes) and {free / 1e9:.2f} GB ({free} bytes) are free"
        )
        self.needed, self.free = needed, free


OnVerified = Callable[[ModelSpec, Path], Awaitable[None]]


def snapshot_of(row: DownloadRow | None) -> Snapshot:
    if row is None:
        return Snapshot()
    return Snapshot(
        variant=row.variant, status=row.status, phase=row.phase, error=row.error,
        total=row.total_size, done=row.downloaded_size,
    )  # fmt: skip


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: Store,
        hub: HubClient,
        on_progress: Callable[[Snapshot], None],
        on_verified: OnVerified | None = None,
        limiter: Limiter | None = None,
        on_queue: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self.catalog = catalog
        self._store = store
        self._hub = hub
        self._on_progress = on_progress
        self._on_verified = on_verified
        self._limiter = limiter
        self.finals = FinalFiles(settings.models_dir, store)
        self._start_lock = asyncio.Lock()
        self.current: Download | None = None
        self._task: asyncio.Task | None = None
        self._last_row: DownloadRow | None = None
        self.queue = DownloadQueue(store, on_change=on_queue)
        self._closing = False  # a stopping daemon starts nothing queued
        self._starters: set[asyncio.Task] = set()
        # For /metrics: totals of finished runs; the running one is added when read.
        self.outcomes: dict[str, int] = {}  # completed / error / cancelled
        self.finished_bytes = 0
        self.finished_retries = 0
        self.finished_seconds = 0.0
        self.download_seconds = download_seconds()  # runs that verified their file

    # ---- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def snapshot(self) -> Snapshot:
        if self.current is not None:
            return self.current.snapshot()
        snap = snapshot_of(self._last_row)
        return replace(snap, max_rate=self._limiter.rate) if self._limiter else snap

    def final_path(self, spec: ModelSpec) -> Path:
        return final_path(self._settings.models_dir, spec)

    def is_downloaded(self, spec: ModelSpec) -> bool:
        """The final file is the one that was verified (a changed one is checked again)."""
        return self.finals.is_verified(spec)

    async def downloaded_files(self) -> dict[str, tuple[ModelSpec, Path]]:
        """Every verified final file, after checking again those that changed."""
        await self.finals.check_all(self.catalog)
        return {
            spec.variant: (spec, self.final_path(spec))
            for spec in self.catalog
            if self.is_downloaded(spec)
        }

    async def partial_bytes(self) -> dict[str, int]:
        """Bytes kept in partial files, by variant: what a Download would resume from."""
        rows = {row.variant: row for row in await self._store.all()}
        models = self._settings.models_dir
        with_part = await asyncio.to_thread(
            lambda: {s.variant for s in self.catalog if part_path(models, s).exists()}
        )
        kept = {
            variant: row.downloaded_size
            for variant, row in rows.items()
            if variant in with_part and row.status != Status.COMPLETED
        }
        if self.current and self.running:
            kept[self.current.spec.variant] = self.current.downloaded
        return kept

    # ---- actions -------------------------------------------------------------------------

    async def start(self, variant: str, force: bool = False, queue: bool = False) -> str:
        """`queue`: wait behind a running download instead of Busy (old clients never ask)."""
        spec = self.catalog.require(variant)
        async with self._start_lock:
            await self._let_a_stopping_download_end()
            if self.running:
                assert self.current is not None
                if self.current.spec.variant == variant:
                    return "already_downloading"
                if not queue:
                    raise Busy(self.current.spec.variant)
            if not force and self.is_downloaded(spec):
                return "already_downloaded"
            if self.running:
                await self.queue.add(variant, force)
                return "queued"
            await self._check_space(spec)
            await self.queue.remove(variant)  # started now: it waits no more
            self._launch(spec)
            return "download_started"

    async def _let_a_stopping_download_end(self) -> None:
        """A cancelled download may still be settling (its reply already said cancelled):
        a new start waits for it rather than being told it is still running."""
        task, current = self._task, self.current
        stopping = current is not None and current.row.status in (Status.CANCELLED, Status.ERROR)
        if self.running and stopping and task is not None:
            await asyncio.wait({task}, timeout=CANCEL_WAIT * 5)

    async def _start_next(self) -> None:
        """The first queued variant that can start, once nothing runs."""
        async with self._start_lock:
            while not self.running and not self._closing and (entry := await self.queue.pop()):
                spec = self.catalog.get(entry.variant)
                if spec is None or (not entry.force and self.is_downloaded(spec)):
                    continue  # left the catalog, or downloaded meanwhile
                try:
                    await self._check_space(spec)
                except NotEnoughSpace as exc:
                    log.error("the queued download of %s cannot start: %s", spec.variant, exc)
                    continue
                log.info("starting the queued download of %s", spec.variant)
                self._launch(spec)

    def _ended(self, _task: asyncio.Task) -> None:
        if self._closing:
            return
        starter = asyncio.create_task(self._start_next(), name="next queued download")
        self._starters.add(starter)
        starter.add_done_callback(self._starters.discard)

    async def _check_space(self, spec: ModelSpec) -> None:
        models = self._settings.models_dir
        await asyncio.to_thread(models.mkdir, parents=True, exist_ok=True)
        kept = (await self.partial_bytes()).get(spec.variant, 0)
        needed = spec.size - kept
        free = (await asyncio.to_thread(shutil.disk_usage, models)).free
        if free < needed + DISK_RESERVE:
            raise NotEnoughSpace(needed, free, models)

    def _launch(self, spec: ModelSpec) -> None:
        self.current = Download(
            spec,
            settings=self._settings,
            store=self._store,
            hub=self._hub,
            on_change=self._publish,
            limiter=self._limiter,
        )
        self._task = asyncio.create_task(self._run(self.current), name=f"download {spec.variant}")
        self._task.add_done_callback(self._ended)

    async def _run(self, download: Download) -> None:
        log.info("download of %s started", download.spec.variant)
        started = time.monotonic()
        try:
            await download.run()
            if download.published:
                self.download_seconds.observe(time.monotonic() - started)
                self.finals.remember(download.published)
                await self._hand_over(download)
                await download.complete()
        except asyncio.CancelledError:
            pass  # the row already says "cancelled"; nobody awaits this task's result
        except BaseException:
            log.exception("the download task of %s died", download.spec.variant)
        finally:
            status = download.row.status
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
            self.finished_bytes += download.fetched
            self.finished_retries += download.retries
            self.finished_seconds += time.monotonic() - started
            self._last_row = download.row

    async def _hand_over(self, download: Download) -> None:
        """The on-verified hook (load the model); its failure does not undo the download."""
        if self._on_verified is None:
            return
        download.set_phase(Phase.LOADING)
        try:
            # The swap runs to its end even if this task is cancelled meanwhile.
            await asyncio.shield(self._on_verified(download.spec, download.final_path))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("loading %s after its download failed: %s", download.spec.variant, exc)

    def _publish(self, download: Download) -> None:
        self._on_progress(download.snapshot())

    async def cancel(self) -> tuple[bool, str]:
        if not self.running or self.current is None:
            return False, "No download is running"
        download, task = self.current, self._task
        assert task is not None
        if download.row.phase in (Phase.VERIFYING, Phase.LOADING):
            # Past the last byte: the file is being checked, renamed and swapped in.
            doing = "verified" if download.row.phase == Phase.VERIFYING else "loaded"
            return False, f"{download.spec.variant} is fully downloaded and is being {doing}"
        if not task.cancelling():  # a second click must not interrupt the first one's cleanup
            task.cancel()
        # The task stops at its next await; waiting here lets the reply tell the truth.
        await asyncio.wait({task}, timeout=CANCEL_WAIT)
        if download.row.status != Status.CANCELLED:
            return False, f"{download.spec.variant} could not be stopped in time; try again"
        return True, f"Download of {download.spec.variant} cancelled; the partial file is kept"

    async def cleanup(self) -> int:
        """Delete partial files that no running download owns (catalog variant or not)."""
        async with self._start_lock:  # no download may start on a file being deleted
            owned = None
            if self.running and self.current is not None:
                owned = self.current.partial.path
            removed = await self.finals.remove_partials(keep=owned)
            by_file = {row.filename: row for row in await self._store.all()}
            for name in removed:
                row = by_file.get(name.removesuffix(".part"))
                if row and row.status != Status.COMPLETED:
                    await forget_partial(self._store, row)
            return len(removed)

    async def resume_interrupted(self) -> None:
        """Called at start: finish the story of downloads the last process left running."""
        await self.finals.load()
        await self.queue.load()
        rows = await self._store.all()
        if rows:
            self._last_row = rows[-1]
        interrupted = [r for r in rows if r.status == Status.DOWNLOADING]
        for row in interrupted:
            spec = self.catalog.get(row.variant)
            if spec and self._published_before_death(spec, row):
                await settle_interrupted(self._store, row, Status.COMPLETED)  # died while loading
            elif spec and self._settings.resume_on_start and row is interrupted[-1]:
                log.info("resuming the download of %s left running at the last stop", spec.variant)
                self._launch(spec)
            else:
                await settle_interrupted(self._store, row, Status.CANCELLED)
        if not self.running:
            await self._start_next()  # the queue survives a restart

    def _published_before_death(self, spec: ModelSpec, row: DownloadRow) -> bool:
        # A forced download is a download until its new file has the final name: an old
        # final file beside a `.part` (or before any byte) says nothing about this run.
        if part_path(self._settings.models_dir, spec).exists():
            return False
        # The rename happened (the `.part` is gone); the file is checked again in the background.
        return row.phase in (Phase.VERIFYING, Phase.LOADING) and self.finals.has_size(spec)

    async def close(self) -> None:
        """Stop the running download for a shutdown; its partial file and parts are kept."""
        self._closing = True
        for starter in list(self._starters):
            starter.cancel()
        await self.finals.aclose()
        if not self.running or self._task is None or self.current is None:
            return
        self.current.shutting_down = True  # its last record says "downloading": resumed at start
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=5)
        if not self._task.done():
            # Nothing is written from here: the task's own last record must not be raced.
            log.warning("the download did not stop within 5 s; its last record stays")
