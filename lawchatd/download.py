"""One download: parts fetched over ranged connections into `<filename>.part`, then verified.

The file is modelled as parts from the start. Each connection fills one part at a time; an idle
connection takes half of the largest part still running, so the last percent does not crawl.
A hasher follows the contiguous prefix of finished bytes (reading them back from the page
cache in a thread), so the sha256 is ready moments after the last byte and the byte loop
never hashes. Progress is persisted at checkpoints after an fdatasync, so the store never
claims bytes the disk may not have.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from yarl import URL

from lawchatd.catalog import ModelSpec
from lawchatd.config import Settings
from lawchatd.gguf import NotGGUF, check_header
from lawchatd.hub import HubClient, HubError, Resolved, TransientHubError, is_transient
from lawchatd.store import DownloadRow, Part, Store

log = logging.getLogger(__name__)

WRITE_SIZE = 2 << 20  # bytes gathered before one write: few thread hops, little memory
HASH_SIZE = 16 << 20  # bytes hashed per thread call: keeps cancellation prompt
HASH_READ = 4 << 20  # one reused read buffer for the hasher
IOV_MAX = 1024  # chunks per pwritev call (the Linux limit)
# Parts smaller than this are not worth their own connection: the initial split and an idle
# connection's steal (half of the largest running part) both respect it.
MIN_PART = 4 << 20
CHECKPOINT_SECONDS = 0.5
REPORT_SECONDS = 0.1  # the contract's "about 10 progress messages a second"
SPEED_WINDOW = 3.0


class DownloadFailed(Exception):
    """The download stopped for a reason worth telling the user in these words."""


class _RestartFromZero(Exception):
    """The bytes on disk cannot be continued (a 200 to a range, a changed file): start over."""

    def __init__(self, reason: str, *, ranges_ok: bool = False) -> None:
        super().__init__(reason)
        self.ranges_ok = ranges_ok


class _ConnectionLost(Exception):
    pass


_RETRYABLE = (
    aiohttp.ClientError,
    TimeoutError,
    TransientHubError,
    _ConnectionLost,
    ConnectionError,
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def progress_fields(
    row: DownloadRow | None,
    downloaded: int | None = None,
    speed: float | None = None,
    retries: int = 0,
) -> dict:
    """The contract's PROGRESS object for a download row (idle when there is none)."""
    if row is None:
        return {
            "model_variant": None, "progress": 0, "status": "idle", "error": None,
            "total_size": 0, "downloaded_size": 0, "speed": None, "eta": None, "phase": None,
            "retries": 0,
        }  # fmt: skip
    done = row.downloaded_size if downloaded is None else downloaded
    total = row.total_size
    running = row.status == "downloading"
    speed = speed if running else None
    eta = round((total - done) / speed, 1) if speed else None
    return {
        "model_variant": row.variant,
        "progress": round(100 * done / total, 2) if total else 0,
        "status": row.status,
        "error": row.error,
        "total_size": total,
        "downloaded_size": done,
        "speed": round(speed, 1) if speed is not None else None,
        "eta": eta,
        "phase": row.phase,
        "retries": retries,
    }


def final_path(models_dir: Path, spec: ModelSpec) -> Path:
    return models_dir / spec.filename


def part_path(models_dir: Path, spec: ModelSpec) -> Path:
    return models_dir / f"{spec.filename}.part"


def split_parts(size: int, connections: int) -> list[Part]:
    count = max(1, min(connections, size // MIN_PART or 1))
    step = -(-size // count)
    return [Part(start, min(start + step, size)) for start in range(0, size, step)]


class Download:
    def __init__(
        self,
        spec: ModelSpec,
        *,
        settings: Settings,
        store: Store,
        hub: HubClient,
        on_change: Callable[[Download], None],
        after_verified: Callable[[ModelSpec, Path], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self._settings = settings
        self._store = store
        self._hub = hub
        self._on_change = on_change
        self._after_verified = after_verified
        self.path = part_path(settings.models_dir, spec)
        self.final_path = final_path(settings.models_dir, spec)
        self.row = DownloadRow(spec.variant, spec.filename, "downloading", total_size=spec.size)
        self.parts: list[Part] = []
        self.retries = 0
        self.fetched = 0  # bytes this run took from the network (metrics)
        self._busy: set[int] = set()  # starts of parts a connection is filling
        self._backing_off = 0
        self._phase_before_retry: str | None = None
        self._url: URL | None = None
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._written = asyncio.Event()
        self._samples: list[tuple[float, int]] = []

    # ---- what the outside sees -------------------------------------------------------------

    def progress(self) -> dict:
        return progress_fields(self.row, self.downloaded, self.speed(), self.retries)

    @property
    def downloaded(self) -> int:
        return sum(p.done for p in self.parts) if self.parts else self.row.downloaded_size

    def speed(self) -> float | None:
        if self.row.status != "downloading" or len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else None

    def _sample(self) -> None:
        now = time.monotonic()
        self._samples.append((now, self.downloaded))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW:
            self._samples.pop(0)

    def _set(self, *, status: str | None = None, phase: str | None = None) -> None:
        if status:
            self.row.status = status
        self.row.phase = phase
        self._on_change(self)

    # ---- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        """Download, verify and rename. Raises CancelledError when cancelled."""
        row = await self._store.get(self.spec.variant)
        if row:
            self.row = row
        self.row.status, self.row.error, self.row.finished_at = "downloading", None, None
        self.row.started_at = time.time()
        self.row.total_size = self.spec.size
        self._set(phase="resolving")
        await self._store.save(self.row)
        fd: int | None = None
        try:
            resolved = await self._with_retries(self._resolve)
            await self._prepare_partial(resolved)
            fd = os.open(self.path, os.O_RDWR)
            await self._fetch_all(fd)
            await self._verify_and_publish(fd)
        except asyncio.CancelledError:
            await self._stop("cancelled", None, fd)
            raise
        except DownloadFailed as exc:
            await self._stop("error", str(exc), fd)
        except Exception as exc:  # a bug must still leave an honest row, and a log line
            log.exception("download of %s failed unexpectedly", self.spec.variant)
            await self._stop("error", f"internal error: {exc}", fd)
        finally:
            if fd is not None:
                os.close(fd)

    async def _stop(self, status: str, error: str | None, fd: int | None) -> None:
        # The state is set before any await, and the writes are shielded: a second cancel
        # (a double click, then SIGTERM) must not leave a row that says "downloading".
        self.row.error = error
        self.row.finished_at = time.time()
        self._set(status=status, phase=None)
        try:
            await asyncio.shield(self._persist_stop(fd))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not record the end of the download of %s", self.spec.variant)
        log.info(
            "download of %s %s at %d/%d bytes%s",
            self.spec.variant, status, self.downloaded, self.spec.size, f": {error}" if error else "",
        )  # fmt: skip

    async def _persist_stop(self, fd: int | None) -> None:
        if fd is not None and self.parts:
            await self._checkpoint(fd)
        await self._store.save(self.row)

    async def _resolve(self) -> Resolved:
        try:
            resolved = await self._hub.resolve(self.spec, self.spec.revision)
        except HubError as exc:
            raise DownloadFailed(str(exc)) from exc
        want = self.spec.sha256
        if want and resolved.sha256 and resolved.sha256 != want:
            raise DownloadFailed(
                f"the upstream file changed: the Hub reports sha256 {resolved.sha256} for "
                f"{self.spec.filename}, the catalog expects {want}; nothing was downloaded"
            )
        if resolved.size is not None and resolved.size != self.spec.size:
            raise DownloadFailed(
                f"the upstream file changed: the Hub reports {resolved.size} bytes for "
                f"{self.spec.filename}, the catalog expects {self.spec.size}"
            )
        self._url = resolved.url
        if resolved.url == self._hub.resolve_url(self.spec, self.spec.revision) and resolved.commit:
            # Served by the Hub itself: pin the commit so a push cannot splice two versions.
            self._url = self._hub.resolve_url(self.spec, resolved.commit)
        return resolved

    async def _resolve_again(self) -> None:
        started_with = self.row.upstream_sha256
        resolved = await self._resolve()
        if started_with and resolved.sha256 and resolved.sha256 != started_with:
            self.row.upstream_sha256 = resolved.sha256
            raise _RestartFromZero("the upstream file changed mid-download", ranges_ok=True)

    async def _prepare_partial(self, resolved: Resolved) -> None:
        parts = await self._store.parts(self.spec.variant)
        on_disk = await asyncio.to_thread(_file_size, self.path)
        same_file = resolved.sha256 is None or self.row.upstream_sha256 in (None, resolved.sha256)
        tiles = bool(parts) and parts[0].start == 0 and parts[-1].end == self.spec.size
        if tiles and on_disk is not None and same_file:
            for part in parts:  # never trust the store past what the file holds
                part.done = max(0, min(part.done, on_disk - part.start))
            self.parts = parts
            log.info("resuming %s from %d bytes", self.spec.variant, self.downloaded)
        else:
            if parts and not same_file:
                log.info("upstream sha256 of %s changed: starting over", self.spec.variant)
            await self._start_over()
        self.row.commit_sha = resolved.commit
        self.row.upstream_sha256 = resolved.sha256
        await self._store.save(self.row, self.parts)

    async def _start_over(self) -> None:
        self.parts = split_parts(self.spec.size, self._settings.connections)
        self.row.cdn_etag = None
        self._hasher, self._hashed = hashlib.sha256(), 0
        await asyncio.to_thread(_truncate, self.path)

    # ---- fetching ------------------------------------------------------------------------

    async def _fetch_all(self, fd: int) -> None:
        connections = self._settings.connections
        while True:
            self._set(phase="downloading")
            try:
                async with asyncio.TaskGroup() as group:
                    loops = [
                        group.create_task(self._report_loop()),
                        group.create_task(self._checkpoint_loop(fd)),
                    ]
                    fetching = [group.create_task(self._worker(fd)) for _ in range(connections)]
                    fetching.append(group.create_task(self._hash_loop(fd)))
                    await asyncio.gather(*fetching)
                    for task in loops:
                        task.cancel()
                return
            except ExceptionGroup as group:
                # An error wins over a restart: the partial it speaks of must not be truncated.
                if failed := group.subgroup(DownloadFailed):
                    raise failed.exceptions[0] from None
                restart = group.subgroup(_RestartFromZero)
                if restart is None:
                    raise
                reason = restart.exceptions[0]
            log.warning("%s: %s; starting over", self.spec.variant, reason)
            await self._start_over()
            if not reason.ranges_ok:
                self.parts = [Part(0, self.spec.size)]
                connections = 1  # the server does not honour ranges
            await self._store.save(self.row, self.parts)

    def _claim(self) -> Part | None:
        for part in self.parts:
            if part.remaining > 0 and part.start not in self._busy:
                self._busy.add(part.start)
                return part
        running = [p for p in self.parts if p.start in self._busy and p.remaining > 2 * MIN_PART]
        if not running:
            return None
        largest = max(running, key=lambda p: p.remaining)
        middle = largest.offset + largest.remaining // 2
        stolen = Part(middle, largest.end)
        largest.end = middle  # its connection sees the new end and stops there
        self.parts.insert(self.parts.index(largest) + 1, stolen)
        self._busy.add(stolen.start)
        return stolen

    async def _worker(self, fd: int) -> None:
        while (part := self._claim()) is not None:
            try:
                await self._fetch_part(part, fd)
            finally:
                self._busy.discard(part.start)

    async def _fetch_part(self, part: Part, fd: int) -> None:
        failures = 0
        while part.remaining > 0:
            before = part.done
            try:
                await self._stream(part, fd)
            except _RETRYABLE as exc:
                failures = 1 if part.done > before else failures + 1
                if failures > self._settings.max_retries:
                    raise DownloadFailed(
                        f"connection lost: {_describe(exc)} (gave up after "
                        f"{self._settings.max_retries} retries; the partial file is kept)"
                    ) from exc
                await self._back_off(failures, exc)

    async def _back_off(self, failures: int, exc: BaseException) -> None:
        self.retries += 1
        delay = min(30.0, self._settings.retry_backoff * 2 ** (failures - 1))
        log.warning("%s: %s; retry %d in %.1fs", self.spec.variant, _describe(exc), failures, delay)
        if not self._backing_off:
            self._phase_before_retry = self.row.phase
        self._backing_off += 1
        self._set(phase="retrying")
        try:
            await asyncio.sleep(delay)
        finally:
            self._backing_off -= 1
            if not self._backing_off and self.row.status == "downloading":
                self._set(phase=self._phase_before_retry)

    async def _stream(self, part: Part, fd: int) -> None:
        if self._url is None:
            await self._resolve_again()
        size = self.spec.size
        end = None if part.end == size else part.end
        async with self._hub.get_range(self._url, part.offset, end, self.row.cdn_etag) as resp:
            self._check_response(resp, part, ranged=part.offset > 0 or end is not None)
            # Chunks are kept as they arrive and written with one pwritev: no copy into a
            # buffer that is freed and grown again every few MB.
            chunks: list[bytes] = []
            buffered = 0
            flush_at = time.monotonic() + REPORT_SECONDS
            async for chunk in resp.content.iter_any():
                chunks.append(chunk)
                buffered += len(chunk)
                # Another connection may have taken the tail of this part: stop at its end.
                if buffered >= part.remaining:
                    await self._write(fd, part, _clip(chunks, part.remaining))
                    return
                # Big writes when bytes pour in; timely ones on a slow line, for progress.
                if buffered >= WRITE_SIZE or time.monotonic() >= flush_at:
                    await self._write(fd, part, chunks)
                    chunks, buffered = [], 0
                    flush_at = time.monotonic() + REPORT_SECONDS
            await self._write(fd, part, chunks)
        if part.remaining > 0:
            raise _ConnectionLost(f"the server closed the connection {part.remaining} bytes early")

    async def _write(self, fd: int, part: Part, chunks: list) -> None:
        if not chunks:
            return
        try:
            written = await asyncio.to_thread(_pwrite_all, fd, chunks, part.offset)
        except OSError as exc:
            raise self._disk_error(exc) from exc
        # A steal may have moved this part's end below the batch: those extra bytes belong to
        # the new part (which writes the same bytes again) and must not be counted twice.
        part.done += min(written, part.end - part.offset)
        self.fetched += written
        self._written.set()

    def _disk_error(self, exc: OSError) -> DownloadFailed:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DownloadFailed(
                f"the disk is full ({self.path.parent}): {self.downloaded} of {self.spec.size} "
                "bytes are kept in the partial file; free some space and download again to resume"
            )
        return DownloadFailed(f"cannot write {self.path}: {exc.strerror}")

    def _check_response(self, resp: aiohttp.ClientResponse, part: Part, ranged: bool) -> None:
        if is_transient(resp.status):
            raise TransientHubError(f"the server answered {resp.status} {resp.reason}")
        if resp.status in (401, 403, 404, 410):
            self._url = None  # a presigned URL may have expired: resolve again before the retry
            raise TransientHubError(f"the file server answered {resp.status} {resp.reason}")
        if resp.status == 200:
            if ranged:
                raise _RestartFromZero("the server sent the whole file to a ranged request")
        elif resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match[1]) != part.offset:
                raise _RestartFromZero(
                    f"unexpected Content-Range {resp.headers.get('Content-Range')!r}"
                )
        elif resp.status == 416:
            raise _RestartFromZero("the server cannot satisfy the range of the partial file")
        else:
            raise DownloadFailed(f"the file server answered {resp.status} {resp.reason}")
        etag = resp.headers.get("ETag")
        if self.row.cdn_etag is None and etag and not etag.startswith("W/"):
            self.row.cdn_etag = etag  # If-Range must carry the CDN's own ETag, never the sha256

    async def _with_retries(self, attempt: Callable):
        failures = 0
        while True:
            try:
                return await attempt()
            except _RETRYABLE as exc:
                failures += 1
                if failures > self._settings.max_retries:
                    raise DownloadFailed(f"cannot reach the Hub: {_describe(exc)}") from exc
                await self._back_off(failures, exc)

    # ---- background loops ----------------------------------------------------------------

    def _hashable_frontier(self) -> int:
        for part in self.parts:  # parts tile the file in order
            if part.remaining > 0:
                return part.offset
        return self.spec.size

    async def _hash_loop(self, fd: int) -> None:
        # A cancelled hash call may still run in its thread: every path that cancels this loop
        # either discards the Download or replaces the hasher (_start_over).
        buffer = bytearray(HASH_READ)  # this loop's own: a cancelled call may still fill its
        while self._hashed < self.spec.size:
            frontier = self._hashable_frontier()
            if self._hashed < frontier:
                length = min(frontier - self._hashed, HASH_SIZE)
                await asyncio.to_thread(_hash_range, self._hasher, fd, self._hashed, length, buffer)
                self._hashed += length
            else:
                self._written.clear()
                await self._written.wait()

    async def _report_loop(self) -> None:
        while True:
            self._sample()
            self._on_change(self)
            await asyncio.sleep(REPORT_SECONDS)

    async def _checkpoint_loop(self, fd: int) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            if self.downloaded != self.row.downloaded_size:
                await self._checkpoint(fd)

    async def _checkpoint(self, fd: int) -> None:
        snapshot = [Part(p.start, p.end, p.done) for p in self.parts]
        # Only bytes that reached the disk are recorded, so a crash never leaves a hole.
        await asyncio.to_thread(os.fdatasync, fd)
        self.row.downloaded_size = sum(p.done for p in snapshot)
        await self._store.save(self.row, snapshot)

    # ---- the end ---------------------------------------------------------------------------

    async def _verify_and_publish(self, fd: int) -> None:
        self._set(phase="verifying")
        await self._checkpoint(fd)
        problem = await asyncio.to_thread(self._verify_bytes, fd)
        if problem:
            await asyncio.to_thread(_unlink, self.path)
            self.parts = []
            self.row.downloaded_size = 0
            self.row.cdn_etag = None
            await self._store.save(self.row, [])
            raise DownloadFailed(f"{problem}; the partial file was deleted")
        await asyncio.to_thread(_publish_file, fd, self.path, self.final_path)
        self.parts = [Part(0, self.spec.size, self.spec.size)]
        if self._after_verified:
            self._set(phase="loading")
            # The swap runs to its end even if this download is cancelled meanwhile.
            await asyncio.shield(self._after_verified(self.spec, self.final_path))
        self.row.error, self.row.finished_at = None, time.time()
        self.row.downloaded_size = self.spec.size
        self._set(status="completed", phase=None)
        await self._store.save(self.row, [])
        log.info("download of %s completed: %s", self.spec.variant, self.final_path)

    def _verify_bytes(self, fd: int) -> str | None:
        size = os.fstat(fd).st_size
        if size != self.spec.size:
            return f"size mismatch: expected {self.spec.size} bytes, got {size}"
        digest = self._hasher.hexdigest()
        for name, want in (("catalog", self.spec.sha256), ("Hub", self.row.upstream_sha256)):
            if want and digest != want:
                return f"sha256 mismatch: the {name} expects {want}, the bytes hash to {digest}"
        try:
            check_header(self.path)
        except NotGGUF as exc:
            return str(exc)
        return None


_URL_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")


def _describe(exc: BaseException) -> str:
    """An exception in words for logs and the `error` field, without presigned URL signatures."""
    text = _URL_QUERY.sub(r"\1?...", str(exc))
    if isinstance(exc, TimeoutError) and not text:
        return "no data arrived within the stall timeout"
    return text or type(exc).__name__


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _truncate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb"):
        pass


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _hash_range(hasher, fd: int, offset: int, length: int, buffer: bytearray) -> None:
    view = memoryview(buffer)
    end = offset + length
    while offset < end:
        count = os.preadv(fd, [view[: min(end - offset, len(view))]], offset)
        if not count:
            raise OSError(errno.EIO, "the partial file is shorter than its finished parts")
        hasher.update(view[:count])
        offset += count


def _clip(chunks: list, limit: int) -> list:
    """The first `limit` bytes of `chunks`."""
    kept, total = [], 0
    for chunk in chunks:
        if total + len(chunk) >= limit:
            kept.append(memoryview(chunk)[: limit - total])
            return kept
        kept.append(chunk)
        total += len(chunk)
    return kept


def _pwrite_all(fd: int, chunks: list, offset: int) -> int:
    """Write every chunk at `offset` on, in few system calls; pwritev may write short."""
    views = [memoryview(c) for c in chunks]
    total = 0
    while views:
        written = os.pwritev(fd, views[:IOV_MAX], offset + total)
        total += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]
    return total


def _publish_file(fd: int, part_file: Path, final: Path) -> None:
    os.fsync(fd)
    os.replace(part_file, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)
