"""Download: one catalog variant fetched by the engine for the daemon.

The adapter between the daemon and lawchatd.fetch: ModelSpec -> FileRef, Settings ->
FetchOptions, the store -> the engine's journal (RowJournal, the one writer of the row).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from lawchatd.config import Settings
from lawchatd.downloads.catalog import ModelSpec
from lawchatd.downloads.journal import RowJournal, transition
from lawchatd.errors import in_words
from lawchatd.fetch import (
    DownloadFailed,
    FetchOptions,
    FileFetch,
    FileRef,
    Limiter,
    Phase,
    Progress,
    Snapshot,
    Status,
)
from lawchatd.fetch.partial import part_path as part_beside
from lawchatd.fetch.plan import PartPlan
from lawchatd.fetch.verify import Verified, record_of
from lawchatd.hub.client import HubClient
from lawchatd.state.store import DownloadRow, Store

log = logging.getLogger(__name__)


def final_path(models_dir: Path, spec: ModelSpec) -> Path:
    return models_dir / spec.filename


def part_path(models_dir: Path, spec: ModelSpec) -> Path:
    return part_beside(final_path(models_dir, spec))


def ref_of(spec: ModelSpec) -> FileRef:
    return FileRef(
        spec.size, spec.sha256, repo=spec.repo, path=spec.filename, revision=spec.revision,
        gguf=spec.gguf, expected_by="catalog",
    )  # fmt: skip


def options_of(settings: Settings) -> FetchOptions:
    return FetchOptions(
        connections=settings.connections, max_retries=settings.max_retries,
        retry_backoff=settings.retry_backoff, stall_timeout=settings.stall_timeout,
    )  # fmt: skip


class Download:
    def __init__(
        self,
        spec: ModelSpec,
        *,
        settings: Settings,
        store: Store,
        hub: HubClient,
        on_change: Callable[[Download], None],
        limiter: Limiter | None = None,
    ) -> None:
        self.spec = spec
        self._store, self._on_change, self._limiter = store, on_change, limiter
        self.final_path = final_path(settings.models_dir, spec)
        fresh = DownloadRow(spec.variant, spec.filename, Status.DOWNLOADING, total_size=spec.size)
        self.journal = RowJournal(store, fresh)
        self.engine = FileFetch(
            ref_of(spec), self.final_path, hub=hub, journal=self.journal,
            options=options_of(settings), limiter=limiter, on_progress=self._progress,
            on_stop=self._stop, name=spec.variant,
        )  # fmt: skip
        self.partial = self.engine.partial
        self.published: Verified | None = None  # the verified file under its final name
        self.shutting_down = False  # set before the daemon's stop cancels the run
        self._stopped = False

    # ---- what the outside sees -------------------------------------------------------------

    @property
    def row(self) -> DownloadRow:
        return self.journal.row

    @property
    def plan(self) -> PartPlan | None:
        return self.engine.plan

    @property
    def downloaded(self) -> int:
        return self.engine.done if self.engine.plan else self.row.downloaded_size

    @property
    def fetched(self) -> int:
        return self.engine.counters.fetched

    @property
    def retries(self) -> int:
        return self.engine.counters.retries

    def snapshot(self) -> Snapshot:
        row, progress = self.row, self.engine.progress()
        return Snapshot(
            variant=self.spec.variant, status=row.status, phase=row.phase, error=row.error,
            total=self.spec.size, done=self.downloaded,
            speed=progress.speed if row.status == Status.DOWNLOADING else 0.0,
            retries=progress.retries, note=progress.note if row.phase == Phase.RETRYING else None,
            max_rate=self._limiter.rate if self._limiter else None,
        )  # fmt: skip

    def set_phase(self, phase: str | None) -> None:
        self.journal.set_phase(phase)
        self._on_change(self)

    def _progress(self, progress: Progress) -> None:
        if self.row.status == Status.DOWNLOADING:
            self.set_phase(progress.phase)

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        """Download, verify and rename. Raises CancelledError when cancelled."""
        try:
            self.set_phase(Phase.RESOLVING)
            await self.journal.begin(self.spec.size)
            self.set_phase(Phase.RESOLVING)
            await self.journal.write()
            fetched = await self.engine.run()
            record = await asyncio.to_thread(
                record_of, self.spec.filename, fetched.path, fetched.sha256
            )
            await self._store.set_verified(self.spec.filename, record)
            self.published = record
        except asyncio.CancelledError as exc:
            await self._end(exc)
            raise
        except Exception as exc:
            await self._end(exc)

    def _stop(self, exc: BaseException) -> None:
        """The state at the end, set before any await: a second cancel (a double click, then
        SIGTERM) must not leave a row that says "downloading"."""
        if self._stopped:
            return
        self._stopped = True
        if isinstance(exc, asyncio.CancelledError):
            if self.shutting_down:  # not the user's cancel: the next start resumes it
                self.journal.set_phase(None)
            else:
                transition(self.row, Status.CANCELLED)
        elif isinstance(exc, DownloadFailed):
            transition(self.row, Status.ERROR, error=str(exc))
        else:  # a bug must still leave an honest row, and a log line
            log.exception("download of %s failed unexpectedly", self.spec.variant)
            transition(self.row, Status.ERROR, error=in_words(exc, unexpected=True))
        self._on_change(self)

    async def _end(self, exc: BaseException) -> None:
        self._stop(exc)  # already done by the engine unless it never ran
        if not self.engine.kept:  # the engine's last entry carried the row; else write it
            try:
                await asyncio.shield(self.journal.write())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not record the end of the download of %s", self.spec.variant)
        row = self.row
        log.info(
            "download of %s %s at %d/%d bytes%s", self.spec.variant, row.status,
            self.downloaded, self.spec.size, f": {row.error}" if row.error else "",
        )  # fmt: skip

    async def complete(self) -> None:
        """The verified file is in place (and handed to the model host): say so."""
        transition(self.row, Status.COMPLETED)
        self._on_change(self)
        try:
            await self.journal.write(forget_parts=True)
        except Exception:
            log.exception("could not record the completion of %s", self.spec.variant)
        log.info("download of %s completed: %s", self.spec.variant, self.final_path)
