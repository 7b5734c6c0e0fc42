"""Final files: what was verified (size, mtime, inode, sha256), checked again when it changed,
and the partial files beside them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from lawchatd.downloads.catalog import ModelSpec
from lawchatd.fetch.verify import Stopped, hash_file, record_of, stat_key, unchanged
from lawchatd.state.store import Store, Verified

log = logging.getLogger(__name__)


class FinalFiles:
    def __init__(self, models_dir: Path, store: Store) -> None:
        self._dir = models_dir
        self._store = store
        self._records: dict[str, Verified] = {}
        self._failed: dict[str, tuple[int, int, int] | None] = {}  # bad files, as they were
        self._checks: dict[str, asyncio.Task] = {}
        self._stop = threading.Event()  # tells hashing threads the daemon is stopping

    async def load(self) -> None:
        self._records = await self._store.verified()

    def remember(self, record: Verified) -> None:
        self._records[record.filename] = record
        self._failed.pop(record.filename, None)

    def has_size(self, spec: ModelSpec) -> bool:
        key = stat_key(self._dir / spec.filename)
        return key is not None and key[0] == spec.size

    def is_verified(self, spec: ModelSpec) -> bool:
        """True when the file is the one verified; else a check starts in the background."""
        path = self._dir / spec.filename
        record = self._records.get(spec.filename)
        if unchanged(path, record) and spec.sha256 in (None, record.sha256):  # type: ignore[union-attr]
            return True
        self._schedule(spec)
        return False

    def _schedule(self, spec: ModelSpec) -> None:
        name = spec.filename
        if name in self._checks or not self.has_size(spec):
            return
        if name in self._failed and self._failed[name] == stat_key(self._dir / name):
            return  # already found wrong, and not changed since
        task = asyncio.get_running_loop().create_task(self._check(spec), name=f"verify {name}")
        self._checks[name] = task
        task.add_done_callback(lambda _t: self._checks.pop(name, None))

    async def verify(self, spec: ModelSpec) -> str:
        """Hash the final file now, whatever its record says (a flipped byte with its mtime
        put back passes the record): "verified", "changed" (no longer counted as
        downloaded), "missing", or "unreadable"."""
        path = self._dir / spec.filename
        if stat_key(path) is None:
            return "missing"
        if running := self._checks.get(spec.filename):
            await asyncio.gather(running, return_exceptions=True)
        return await self._check(spec)

    async def _check(self, spec: ModelSpec) -> str:
        path = self._dir / spec.filename
        before = stat_key(path)
        row = await self._store.get(spec.variant)
        want = spec.sha256 or (row.upstream_sha256 if row else None)
        if before is not None and before[0] != spec.size:
            return await self._changed(spec, before, f"{before[0]} bytes, expected {spec.size}")
        try:
            digest = await asyncio.to_thread(hash_file, path, self._stop)
        except Stopped:
            return "unreadable"
        except OSError as exc:
            log.warning("cannot check %s: %s", path, exc)
            return "unreadable"
        if stat_key(path) != before:
            return "unreadable"  # replaced while hashing: the next look checks the new one
        if want and digest != want:
            log.warning(
                "%s changed on disk (sha256 %s, expected %s): it is no longer counted as "
                "downloaded; download it again", path, digest, want,
            )  # fmt: skip
            return await self._changed(spec, before, None)
        record = await asyncio.to_thread(record_of, spec.filename, path, digest)
        self.remember(record)
        await self._store.set_verified(spec.filename, record)
        return "verified"

    async def _changed(self, spec: ModelSpec, before: tuple[int, int, int] | None, why) -> str:
        if why:
            log.warning(
                "%s changed on disk (%s): no longer counted as downloaded", spec.filename, why
            )
        self._records.pop(spec.filename, None)
        self._failed[spec.filename] = before
        await self._store.set_verified(spec.filename, None)
        return "changed"

    async def aclose(self) -> None:
        """Stop the checks still hashing (a stop must not wait for a 7 GB file)."""
        self._stop.set()
        checks = list(self._checks.values())
        for task in checks:
            task.cancel()
        await asyncio.gather(*checks, return_exceptions=True)

    async def check_all(self, specs: Iterable[ModelSpec]) -> None:
        for spec in specs:
            self.is_verified(spec)
        if self._checks:
            await asyncio.gather(*self._checks.values(), return_exceptions=True)

    async def remove_final(self, spec: ModelSpec) -> int:
        """Delete the final file of ``spec`` and forget it was verified; the bytes freed."""
        path = self._dir / spec.filename
        check = self._checks.pop(spec.filename, None)
        if check:
            check.cancel()

        def remove() -> int:
            key = stat_key(path)
            path.unlink(missing_ok=True)
            return key[0] if key else 0

        freed = await asyncio.to_thread(remove)
        self._records.pop(spec.filename, None)
        self._failed.pop(spec.filename, None)
        await self._store.set_verified(spec.filename, None)
        return freed

    async def remove_partials(self, keep: Path | None) -> list[str]:
        """Delete every `*.part` in the models folder but `keep`; the names removed."""

        def remove() -> list[str]:
            removed = []
            for path in sorted(self._dir.glob("*.part")):
                if path != keep and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
            return removed

        if not self._dir.exists():
            return []
        return await asyncio.to_thread(remove)
