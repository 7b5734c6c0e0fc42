"""The running download as an asyncio Task: start, cancel, resume at start, clean up."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from lawchatd.catalog import Catalog, ModelSpec
from lawchatd.config import Settings
from lawchatd.download import Download, final_path, part_path, progress_fields
from lawchatd.hub import HubClient
from lawchatd.modelhost import ModelLoadError
from lawchatd.progress import ProgressHub
from lawchatd.store import DownloadRow, Store

log = logging.getLogger(__name__)

DISK_RESERVE = 64 << 20  # leave room for the database and logs
CANCEL_WAIT = 1.0


class UnknownVariant(LookupError):
    def __init__(self, variant: str, known: list[str]) -> None:
        super().__init__(f"Unknown model variant {variant!r}; available: {', '.join(known)}")


class Busy(RuntimeError):
    def __init__(self, variant: str) -> None:
        super().__init__(f"Another model ({variant}) is currently downloading")
        self.variant = variant


class NotEnoughSpace(OSError):
    def __init__(self, needed: int, free: int, where: Path) -> None:
        super().__init__(
            f"Not enough disk space in {where}: the download needs {needed / 1e9:.2f} GB "
            f"({needed} bytes) and {free / 1e9:.2f} GB ({free} bytes) are free"
        )
        self.needed, self.free = needed, free


OnVerified = Callable[[ModelSpec, Path], Awaitable[None]]


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: Store,
        hub: HubClient,
        progress: ProgressHub,
        on_verified: OnVerified | None = None,
    ) -> None:
        self._settings = settings
        self.catalog = catalog
        self._store = store
        self._hub = hub
        self._progress = progress
        self._on_verified = on_verified
        self._start_lock = asyncio.Lock()
        self.current: Download | None = None
        self._task: asyncio.Task | None = None
        self._last_row: DownloadRow | None = None
        # For /metrics: totals of finished runs; the running one is added when read.
        self.outcomes: dict[str, int] = {}  # completed / error / cancelled
        self.finished_bytes = 0
        self.finished_retries = 0
        self.finished_seconds = 0.0

    # ---- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def progress(self) -> dict:
        if self.current is not None:
            return self.current.progress()
        return progress_fields(self._last_row)

    def final_path(self, spec: ModelSpec) -> Path:
        return final_path(self._settings.models_dir, spec)

    def is_downloaded(self, spec: ModelSpec) -> bool:
        try:
            return self.final_path(spec).stat().st_size == spec.size
        except FileNotFoundError:
            return False

    async def partial_bytes(self) -> dict[str, int]:
        """Bytes kept in partial files, by variant: what a Download would resume from."""
        rows = {row.variant: row for row in await self._store.all()}
        kept = {}
        for spec in self.catalog:
            row = rows.get(spec.variant)
            if (
                row
                and row.status != "completed"
                and part_path(self._settings.models_dir, spec).exists()
            ):
                kept[spec.variant] = row.downloaded_size
        if self.current and self.running:
            kept[self.current.spec.variant] = self.current.downloaded
        return kept

    # ---- actions -------------------------------------------------------------------------

    async def start(self, variant: str, force: bool = False) -> str:
        spec = self.catalog.get(variant)
        if spec is None:
            raise UnknownVariant(variant, self.catalog.variants)
        async with self._start_lock:
            if self.running:
                assert self.current is not None
                if self.current.spec.variant == variant:
                    return "already_downloading"
                raise Busy(self.current.spec.variant)
            if not force and self.is_downloaded(spec):
                return "already_downloaded"
            await self._check_space(spec)
            self._launch(spec)
            return "download_started"

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
            after_verified=self._after_verified if self._on_verified else None,
        )
        self._task = asyncio.create_task(self._run(self.current), name=f"download {spec.variant}")

    async def _run(self, download: Download) -> None:
        log.info("download of %s started", download.spec.variant)
        started = time.monotonic()
        try:
            await download.run()
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

    async def _after_verified(self, spec: ModelSpec, path: Path) -> None:
        assert self._on_verified is not None
        try:
            await self._on_verified(spec, path)
        except ModelLoadError as exc:  # a model that fails to load is still a finished download
            log.error("loading %s after its download failed: %s", spec.variant, exc)
        except Exception:
            log.exception("loading %s after its download failed", spec.variant)

    def _publish(self, download: Download) -> None:
        self._progress.publish({"type": "progress", **download.progress()})

    async def cancel(self) -> tuple[bool, str]:
        if not self.running or self.current is None:
            return False, "No download is running"
        download, task = self.current, self._task
        assert task is not None
        if download.row.phase in ("verifying", "loading"):
            # Past the last byte: the file is being checked, renamed and swapped in.
            doing = "verified" if download.row.phase == "verifying" else "loaded"
            return False, f"{download.spec.variant} is fully downloaded and is being {doing}"
        if not task.cancelling():  # a second click must not interrupt the first one's cleanup
            task.cancel()
        # The task stops at its next await; waiting here lets the reply tell the truth.
        await asyncio.wait({task}, timeout=CANCEL_WAIT)
        return True, f"Download of {download.spec.variant} cancelled; the partial file is kept"

    async def cleanup(self) -> int:
        """Delete partial files that no running download owns."""
        async with self._start_lock:  # no download may start on a file being deleted
            return await self._cleanup()

    async def _cleanup(self) -> int:
        cleaned = 0
        for spec in self.catalog:
            path = part_path(self._settings.models_dir, spec)
            owned = self.running and self.current is not None and self.current.spec is spec
            if owned or not path.exists():
                continue
            await asyncio.to_thread(path.unlink, missing_ok=True)
            cleaned += 1
            row = await self._store.get(spec.variant)
            if row and row.status != "completed":
                row.downloaded_size, row.cdn_etag = 0, None
                await self._store.save(row, [])
        return cleaned

    async def resume_interrupted(self) -> None:
        """Called at start: finish the story of downloads the last process left running."""
        rows = await self._store.all()
        if rows:
            self._last_row = rows[-1]
        interrupted = [r for r in rows if r.status == "downloading"]
        for row in interrupted:
            spec = self.catalog.get(row.variant)
            if spec and self.is_downloaded(spec):
                row.status, row.phase = "completed", None  # died while loading the model
            elif spec and self._settings.resume_on_start and row is interrupted[-1]:
                log.info("resuming the download of %s left running at the last stop", spec.variant)
                self._launch(spec)
                continue
            else:
                row.status, row.phase = "cancelled", None
            await self._store.save(row)

    async def close(self) -> None:
        """Stop the running download for a shutdown; its partial file and parts are kept."""
        if self.running and self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
            # A stop by the daemon is not the user's cancel: the next start resumes it.
            if self.current is not None and self.current.row.status == "cancelled":
                self.current.row.status = "downloading"
                await self._store.save(self.current.row)
