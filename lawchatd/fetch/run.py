"""Download: resolve -> plan -> fetch -> verify -> publish. The parts do the work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lawchatd.downloads.catalog import ModelSpec
from lawchatd.fetch.errors import (
    DownloadFailed,
    OneStream,
    RestartFromZero,
    first_leaf,
    unexpected,
)
from lawchatd.fetch.fetcher import Counters, Fetcher, Limiter, Link
from lawchatd.fetch.hasher import FollowingHasher
from lawchatd.fetch.journal import Journal, trusted
from lawchatd.fetch.partial import PartialFile, final_path, part_path
from lawchatd.fetch.plan import PartPlan
from lawchatd.fetch.resolve import resolve_into
from lawchatd.fetch.status import Phase, Snapshot, SpeedMeter, Status
from lawchatd.fetch.takeover import Paces
from lawchatd.fetch.verify import check_bytes, record_of, stat_key
from lawchatd.fetch.waits import Waits
from lawchatd.hub.client import HubClient, Resolved
from lawchatd.state.store import DownloadRow, Store, Verified

if TYPE_CHECKING:  # read, never built here
    from lawchatd.process.config import Settings

log = logging.getLogger(__name__)
REPORT_SECONDS = 0.1  # the contract's "about 10 progress messages a second"


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
        self._settings, self._store, self._on_change = settings, store, on_change
        self._limiter = limiter
        self.final_path = final_path(settings.models_dir, spec)
        self.partial = PartialFile(part_path(settings.models_dir, spec))
        self.row = DownloadRow(
            spec.variant, spec.filename, Status.DOWNLOADING, total_size=spec.size
        )
        self.plan: PartPlan | None = None
        self.link = Link(hub)
        self.counters = Counters()
        self.published: Verified | None = None  # the verified file under its final name
        self.shutting_down = False  # set before the daemon's stop cancels the run
        self._hasher: FollowingHasher | None = None
        self._paces: Paces | None = None
        self._journal: Journal | None = None
        self._meter = SpeedMeter()
        self.waits = Waits(self.row, self.set_phase, self.counters, log_as=spec.variant)

    # ---- what the outside sees -------------------------------------------------------------

    @property
    def downloaded(self) -> int:
        return self.plan.done if self.plan else self.row.downloaded_size

    @property
    def fetched(self) -> int:
        return self.counters.fetched

    @property
    def retries(self) -> int:
        return self.counters.retries

    def snapshot(self) -> Snapshot:
        running = self.row.status == Status.DOWNLOADING
        return Snapshot(
            variant=self.spec.variant, status=self.row.status, phase=self.row.phase,
            error=self.row.error, total=self.spec.size, done=self.downloaded,
            speed=self._meter.speed() if running else 0.0, retries=self.retries,
            note=self.waits.note if self.row.phase == Phase.RETRYING else None,
            max_rate=self._limiter.rate if self._limiter else None,
        )  # fmt: skip

    def set_phase(self, phase: str | None, status: str | None = None) -> None:
        if status:
            self.row.status = status
        self.row.phase = phase
        self._on_change(self)

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        """Download, verify and rename. Raises CancelledError when cancelled."""
        try:
            await self._begin()
            resolved = await self.waits.retry(
                self._resolve, self._settings.max_retries, self._settings.retry_backoff
            )
            await self._prepare(resolved)
            await self._fetch_all()
            await self._verify_and_publish()
        except asyncio.CancelledError:
            # A stop of the daemon is not the user's cancel: the next start resumes it.
            await self._stop(Status.DOWNLOADING if self.shutting_down else Status.CANCELLED, None)
            raise
        except DownloadFailed as exc:
            await self._stop(Status.ERROR, str(exc))
        except Exception as exc:  # a bug must still leave an honest row, and a log line
            log.exception("download of %s failed unexpectedly", self.spec.variant)
            await self._stop(Status.ERROR, unexpected(exc))
        finally:
            await asyncio.shield(self.partial.aclose())

    async def complete(self) -> None:
        """The verified file is in place (and handed to the model host): say so."""
        self.row.error, self.row.finished_at = None, time.time()
        self.row.downloaded_size = self.spec.size
        self.set_phase(None, Status.COMPLETED)
        try:
            await self._store.save(self.row, [])
        except Exception:
            log.exception("could not record the completion of %s", self.spec.variant)
        log.info("download of %s completed: %s", self.spec.variant, self.final_path)

    async def _begin(self) -> None:
        self.set_phase(Phase.RESOLVING)
        if row := await self._store.get(self.spec.variant):
            if row.status == Status.COMPLETED:  # forced again: none of it is in a .part yet
                row.downloaded_size = 0
            self.row = row
            self.waits.follow(row)
        self.row.status, self.row.error, self.row.finished_at = Status.DOWNLOADING, None, None
        self.row.started_at, self.row.total_size = time.time(), self.spec.size
        self.set_phase(Phase.RESOLVING)
        await self._store.save(self.row)

    async def _stop(self, status: str, error: str | None) -> None:
        # The state is set before any await, and the writes are shielded: a second cancel
        # (a double click, then SIGTERM) must not leave a row that says "downloading".
        self.row.error, self.row.finished_at = error, time.time()
        self.set_phase(None, status)
        try:
            await asyncio.shield(self._persist_stop())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not record the end of the download of %s", self.spec.variant)
        log.info(
            "download of %s %s at %d/%d bytes%s",
            self.spec.variant, status, self.downloaded, self.spec.size, f": {error}" if error else "",
        )  # fmt: skip

    async def _persist_stop(self) -> None:
        if self._journal is not None and self.plan is not None:
            await self.partial.settle()  # record the writes a cancel interrupted, too
            self.row.downloaded_size = self.plan.done
            self.row.cdn_etag = self.link.etag
            await self._store.save(self.row, self.plan.snapshot())
        else:
            await self._store.save(self.row)

    # ---- resolve and plan ----------------------------------------------------------------

    async def _resolve(self) -> Resolved:
        return await resolve_into(self.link, self.spec)

    async def _resolve_again(self) -> None:
        started_with = self.row.upstream_sha256
        resolved = await self._resolve()
        if started_with and resolved.sha256 and resolved.sha256 != started_with:
            self.row.upstream_sha256 = resolved.sha256
            raise RestartFromZero("the upstream file changed mid-download")

    async def _prepare(self, resolved: Resolved) -> None:
        stored = trusted(await self._store.parts(self.spec.variant), self.row.boot_id)
        key = await asyncio.to_thread(stat_key, self.partial.path)
        on_disk = None if key is None else key[0]
        same_file = resolved.sha256 is None or self.row.upstream_sha256 in (None, resolved.sha256)
        plan = PartPlan.resume(self.spec.size, stored, on_disk) if same_file else None
        await self.partial.open(truncate=plan is None)
        self.link.etag = self.row.cdn_etag if plan else None
        if plan is None:
            if stored and not same_file:
                log.info("upstream sha256 of %s changed: starting over", self.spec.variant)
            plan = PartPlan.split(self.spec.size, self._settings.connections)
        else:
            log.info("resuming %s from %d bytes", self.spec.variant, plan.done)
        self._use(plan)
        self.row.commit_sha, self.row.upstream_sha256 = resolved.commit, resolved.sha256
        await self._journal_or_fail().record()

    def _use(self, plan: PartPlan) -> None:
        self.plan = plan
        self._paces = Paces(plan)
        self._hasher = FollowingHasher(self.partial, plan)
        if self._journal is None:
            self._journal = Journal(self._store, self.row, plan, self.partial, self.link)
        self._journal.follow(plan)

    def _journal_or_fail(self) -> Journal:
        assert self._journal is not None
        return self._journal

    async def _start_over(self, connections: int) -> None:
        self.link.etag, self.link.refusals, self.link.single_stream = None, 0, False
        await self.partial.truncate()
        self._use(PartPlan.split(self.spec.size, connections))
        await self._journal_or_fail().record()

    # ---- fetching ------------------------------------------------------------------------

    async def _fetch_all(self) -> None:
        connections = self._settings.connections
        while True:
            self.set_phase(Phase.DOWNLOADING)
            try:
                await self._fetch_round(connections)
                return
            except BaseExceptionGroup as group:
                reason = first_leaf(group)
            if isinstance(reason, OneStream):
                log.warning("%s: %s", self.spec.variant, reason)
                assert self.plan is not None
                connections = 1
                self._use(self.plan.one_stream())
                continue
            if not isinstance(reason, RestartFromZero):
                raise reason
            self.counters.restarts += 1
            if self.counters.restarts > self._settings.max_retries:
                raise DownloadFailed(
                    f"{reason}, again and again: gave up after {self._settings.max_retries} "
                    "restarts from the start of the file"
                )
            log.warning("%s: %s; starting over", self.spec.variant, reason)
            await self._start_over(connections)

    async def _fetch_round(self, connections: int) -> None:
        assert self._hasher is not None
        async with asyncio.TaskGroup() as group:
            loops = [
                group.create_task(self._report_loop()),
                group.create_task(self._journal_or_fail().run()),
            ]
            work = [group.create_task(self._worker()) for _ in range(connections)]
            work.append(group.create_task(self._hasher.run()))
            done, _ = await asyncio.wait(work)
            if all(not t.cancelled() and t.exception() is None for t in done):
                for task in loops:
                    task.cancel()

    async def _worker(self) -> None:
        assert self.plan is not None and self._hasher is not None and self._paces is not None
        plan, hasher = self.plan, self._hasher
        fetcher = Fetcher(
            self.link, self.partial, plan,
            counters=self.counters, max_retries=self._settings.max_retries,
            backoff_base=self._settings.retry_backoff, backoff=self.waits.wait,
            resolve=self._resolve_again, on_written=hasher.poke, limiter=self._limiter,
        )  # fmt: skip
        paces, own_pace = self._paces, 0.0
        while True:
            part = plan.claim() or paces.take_over(own_pace)
            if part is None:
                if not plan.busy:
                    return
                await paces.idle()  # others still work: one may crawl, or all end
                continue
            filling = paces.start(part)
            try:
                await fetcher.fill(part)
            finally:
                plan.release(part)
                own_pace = paces.end(filling)

    async def _report_loop(self) -> None:
        while True:
            self._meter.sample(self.downloaded)
            self._on_change(self)
            await asyncio.sleep(REPORT_SECONDS)

    # ---- the end ---------------------------------------------------------------------------

    async def _verify_and_publish(self) -> None:
        assert self._hasher is not None and self._journal is not None
        self.set_phase(Phase.VERIFYING)
        await self._journal.record()  # at once: the fdatasync below may take seconds
        await self._journal.sync()
        digest = self._hasher.hexdigest()
        size = await self.partial.size()
        problem = await asyncio.to_thread(
            check_bytes, self.spec, self.row, size, digest, self.partial.path
        )
        if problem:
            await self.partial.discard()
            self.plan, self.row.downloaded_size, self.row.cdn_etag = None, 0, None
            await self._store.save(self.row, [])
            raise DownloadFailed(f"{problem}; the partial file was deleted")
        await self.partial.publish(self.final_path)
        record = await asyncio.to_thread(record_of, self.spec.filename, self.final_path, digest)
        await self._store.set_verified(self.spec.filename, record)
        self.published = record
