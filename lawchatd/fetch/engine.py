"""FileFetch: resolve -> plan -> fetch in parallel ranges -> hash -> verify -> publish.

One file, from a FileRef into `dest` (its bytes gather in `dest.part` beside it). The parts do
the work; this class wires them and owns the run's state: the plan, the phase, the counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from lawchatd.fetch.errors import DownloadFailed, OneStream, RestartFromZero, first_leaf
from lawchatd.fetch.fetcher import Counters, Fetcher, Limiter, Link
from lawchatd.fetch.hasher import FollowingHasher
from lawchatd.fetch.identity import change
from lawchatd.fetch.journal import Entry, Journal, MemoryJournal, boot_id, trusted
from lawchatd.fetch.options import FetchOptions
from lawchatd.fetch.partial import PartialFile, part_path
from lawchatd.fetch.plan import PARTS_PER_CONNECTION, PartPlan
from lawchatd.fetch.recorder import Recorder, Upstream
from lawchatd.fetch.ref import FileRef
from lawchatd.fetch.resolve import resolve_within
from lawchatd.fetch.slots import Crowded, Slots
from lawchatd.fetch.status import Phase, SpeedMeter
from lawchatd.fetch.takeover import Paces
from lawchatd.fetch.verify import check_bytes, stat_key
from lawchatd.fetch.waits import Waits
from lawchatd.hub.client import HubClient, Resolved

log = logging.getLogger(__name__)
REPORT_SECONDS = 0.1  # the contract's "about 10 progress messages a second"


@dataclass(frozen=True)
class Progress:
    """Where a FileFetch stands, for a progress callback."""

    phase: str | None
    done: int  # bytes on disk (0 until the plan is made)
    size: int
    speed: float  # bytes/s over the last seconds
    retries: int
    note: str | None  # why it waits, while the phase is `retrying`


@dataclass(frozen=True)
class Fetched:
    """A verified file under its final name."""

    path: Path
    sha256: str
    size: int
    commit: str | None  # the Hub commit it was resolved at (None for a plain URL)


class FileFetch:
    def __init__(
        self,
        ref: FileRef,
        dest: Path,
        *,
        hub: HubClient,
        journal: Journal | None = None,
        options: FetchOptions | None = None,
        limiter: Limiter | None = None,
        on_progress: Callable[[Progress], None] = lambda _p: None,
        on_stop: Callable[[BaseException], None] = lambda _e: None,
        name: str | None = None,
    ) -> None:
        """`on_stop(exc)` is called at once when the run ends on `exc` (before any await): what
        the caller records about the end then goes into the journal's last entry."""
        self.ref, self.final_path = ref, dest
        self.options = options or FetchOptions()
        self.partial = PartialFile(part_path(dest))
        self.link = Link(hub)
        self.counters = Counters()
        self.upstream = Upstream()
        self.plan: PartPlan | None = None
        self.phase: str | None = None
        self.running = False
        self._journal = journal or MemoryJournal()
        self._limiter = limiter
        self._on_progress = on_progress
        self._on_stop = on_stop
        self.kept = False  # the end was recorded in the journal (there was a plan to record)
        self._name = name or ref.name
        self._recorder = Recorder(
            self._journal, lambda: self.plan, self.partial, self.link, self.upstream, self.options
        )
        self._hasher: FollowingHasher | None = None
        self._paces: Paces | None = None
        self._meter = SpeedMeter()
        self._slots = Slots(self.options.connections)  # how many the server takes, learnt
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.options.connect_timeout,
            sock_read=self.options.stall_timeout,
        )  # fmt: skip
        self.waits = Waits(
            lambda: self.phase, self._set_phase, lambda: self.running, self.counters,
            log_as=self._name,
        )  # fmt: skip

    # ---- what the outside sees -------------------------------------------------------------

    @property
    def done(self) -> int:
        return self.plan.done if self.plan else 0

    def progress(self) -> Progress:
        return Progress(
            phase=self.phase, done=self.done, size=self.ref.size,
            speed=self._meter.speed() if self.running else 0.0, retries=self.counters.retries,
            note=self.waits.note if self.phase == Phase.RETRYING else None,
        )  # fmt: skip

    def available(self, offset: int) -> int:
        """The end of the bytes on disk that run without a gap from `offset`."""
        end = offset
        for part in self.plan.parts if self.plan else []:  # the plan keeps them in file order
            if part.start <= end < part.start + part.done:
                end = part.start + part.done
        return end

    def _set_phase(self, phase: str | None) -> None:
        self.phase = phase
        self._on_progress(self.progress())

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> Fetched:
        """Fetch, verify and rename. Raises DownloadFailed (in words), CancelledError when
        cancelled; either way the journal keeps what is on disk, for the next run."""
        self.running = True
        try:
            self._set_phase(Phase.RESOLVING)
            stored = await self._journal.load()
            resolved = await self.waits.retry(
                self._resolve, self.options.max_retries, self.options.retry_backoff
            )
            await self._prepare(resolved, stored)
            await self._fetch_all()
            return await self._verify_and_publish()
        except BaseException as exc:
            self.running, self.phase = False, None
            self._on_stop(exc)
            await asyncio.shield(self._keep())
            raise
        finally:
            self.running = False
            await asyncio.shield(self.partial.aclose())

    async def _keep(self) -> None:
        """Record what the bytes on disk are, the writes a cancel interrupted included."""
        if self.plan is None:
            return  # no plan yet (or its bytes were deleted): the journal's entry stands
        try:
            await self.partial.settle()
            # Always: the caller's record of the end goes with it. Not `record()`: a deleted
            # .part must not fail the end once more.
            await self._recorder.save(self._recorder.entry(settled=True), always=True)
            self.kept = True
        except Exception:
            log.exception("could not record the progress of %s", self._name)

    # ---- resolve and plan ----------------------------------------------------------------

    async def _resolve(self) -> Resolved:
        return await resolve_within(self.link, self.ref, self.options.stall_timeout)

    async def _resolve_again(self) -> None:
        started_with = self.upstream.sha256
        resolved = await self._resolve()
        if started_with and resolved.sha256 and resolved.sha256 != started_with:
            self.upstream.sha256 = resolved.sha256
            raise RestartFromZero("the upstream file changed mid-download")

    async def _prepare(self, resolved: Resolved, stored: Entry | None) -> None:
        parts = trusted(stored.parts, stored.boot_id) if stored else []
        if parts and stored:
            same_boot = stored.boot_id is not None and stored.boot_id == boot_id()
            path = self.partial.path
            if why := await asyncio.to_thread(change, stored.identity, path, same_boot=same_boot):
                log.warning("the partial file of %s %s: starting over", self._name, why)
                parts = []
        started_with = stored.sha256 if stored else None
        key = await asyncio.to_thread(stat_key, self.partial.path)
        on_disk = None if key is None else key[0]
        same_file = resolved.sha256 is None or started_with in (None, resolved.sha256)
        plan = PartPlan.resume(self.ref.size, parts, on_disk) if same_file else None
        await self.partial.open(truncate=plan is None)
        self.link.etag = stored.etag if plan and stored else None
        if plan is None:
            if parts and not same_file:
                log.info("upstream sha256 of %s changed: starting over", self._name)
            plan = PartPlan.split(self.ref.size, self.options.connections, PARTS_PER_CONNECTION)
        else:
            log.info("resuming %s from %d bytes", self._name, plan.done)
        self.upstream.commit, self.upstream.sha256 = resolved.commit, resolved.sha256
        self._use(plan)
        await self._recorder.record()

    def _use(self, plan: PartPlan) -> None:
        self.plan = plan
        self._paces = Paces(plan)
        self._hasher = FollowingHasher(self.partial, plan)

    async def _start_over(self, connections: int) -> None:
        self.link.etag, self.link.refusals, self.link.single_stream = None, 0, False
        await self.partial.truncate()
        self._use(PartPlan.split(self.ref.size, connections, PARTS_PER_CONNECTION))
        await self._recorder.record()

    # ---- fetching ------------------------------------------------------------------------

    async def _fetch_all(self) -> None:
        connections, max_retries = self.options.connections, self.options.max_retries
        while True:
            self._set_phase(Phase.DOWNLOADING)
            try:
                await self._fetch_round(connections)
                return
            except BaseExceptionGroup as group:
                reason = first_leaf(group)
            if isinstance(reason, OneStream):
                log.warning("%s: %s", self._name, reason)
                assert self.plan is not None
                connections = 1
                self._use(self.plan.one_stream())
                continue
            if not isinstance(reason, RestartFromZero):
                raise reason
            self.counters.restarts += 1
            if self.counters.restarts > max_retries:
                raise DownloadFailed(
                    f"{reason}, again and again: gave up after {max_retries} "
                    "restarts from the start of the file"
                )
            log.warning("%s: %s; starting over", self._name, reason)
            await self._start_over(connections)

    async def _fetch_round(self, connections: int) -> None:
        assert self._hasher is not None
        async with asyncio.TaskGroup() as group:
            loops = [
                group.create_task(self._report_loop()),
                group.create_task(self._recorder.run()),
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
            counters=self.counters, max_retries=self.options.max_retries,
            backoff_base=self.options.retry_backoff, backoff=self.waits.wait,
            resolve=self._resolve_again, follower=hasher, limiter=self._limiter,
            timeout=self._timeout, slots=self._slots,
        )  # fmt: skip
        paces, own_pace, slots = self._paces, 0.0, self._slots
        while True:
            async with slots.turn():  # the server may take fewer connections than we have
                while not slots.over:
                    part = plan.claim() or paces.take_over(own_pace)
                    if part is None:
                        if not plan.busy:
                            return
                        await paces.idle()  # others still work: one may crawl, or all end
                        continue
                    filling = paces.start(part)
                    try:
                        await fetcher.fill(part)
                    except Crowded:
                        break  # the part goes back to the plan; wait for a slot
                    finally:
                        plan.release(part)
                        own_pace = paces.end(filling)

    async def _report_loop(self) -> None:
        while True:
            self._meter.sample(self.done)
            self._on_progress(self.progress())
            await asyncio.sleep(REPORT_SECONDS)

    # ---- the end ---------------------------------------------------------------------------

    async def _verify_and_publish(self) -> Fetched:
        assert self._hasher is not None
        self._set_phase(Phase.VERIFYING)
        await self._recorder.record(always=True)  # at once: the fdatasync below may take seconds
        await self._recorder.sync()
        digest = self._hasher.hexdigest()
        size = await self.partial.size()
        problem = await asyncio.to_thread(
            check_bytes, self.ref, self.upstream.sha256, size, digest, self.partial.path
        )
        if problem:
            await self.partial.discard()
            self.plan = None
            self.link.etag = None
            await self._recorder.record()  # no parts: nothing is kept
            raise DownloadFailed(problem)  # it says the partial file was deleted
        await self.partial.publish(self.final_path)
        return Fetched(self.final_path, digest, size, self.upstream.commit)
