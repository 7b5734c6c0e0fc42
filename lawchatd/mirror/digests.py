"""A file's sha256 (LFS) or git blob oid (small files), hashed once in a thread per version."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from lawchatd.fetch.verify import hash_file
from lawchatd.mirror.paths import SIDECAR
from lawchatd.mirror.repo import Entry, git_blob_oid

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def blob_oid_file(path: Path) -> str:
    """Blocking: the git blob oid of a (small) file."""
    return git_blob_oid(path.read_bytes())


def read_sidecar(path: Path) -> str | None:
    """Blocking: the sha256 in `<file>.sha256` (sha256sum's format), if there is a valid one."""
    try:
        with open(f"{path}{SIDECAR}", encoding="ascii", errors="replace") as f:
            text = f.read(4096)
    except OSError:
        return None
    token = (text.split() or [""])[0].lower()
    return token if _SHA256_RE.fullmatch(token) else None


def sidecar_or_hash(path: Path) -> str:
    """Blocking: the sidecar's sha256, or the file's own."""
    return read_sidecar(path) or hash_file(path)


class Digests:
    """Bounded by the files in DIR: one cached value per path, replaced when the file changes."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, Path], tuple[object, str]] = {}
        self._running: dict[tuple[str, Path, object], asyncio.Task[str]] = {}

    async def sha256(self, entry: Entry) -> str:
        """From `<file>.sha256` when there is one, else hashed; either once per version of the
        file and its sidecar (a publish replaces both, and so the cache key)."""
        return await self._get("sha256", entry, sidecar_or_hash)

    async def blob_oid(self, entry: Entry) -> str:
        return await self._get("blob", entry, blob_oid_file)

    async def _get(self, kind: str, entry: Entry, compute: Callable[[Path], str]) -> str:
        cached = self._done.get((kind, entry.path))
        if cached and cached[0] == entry.stamps:
            return cached[1]
        key = (kind, entry.path, entry.stamps)
        task = self._running.get(key)
        if task is None:
            # One hash per file even when several connections ask at once.
            task = asyncio.create_task(asyncio.to_thread(compute, entry.path))
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        value = await asyncio.shield(task)
        self._done[(kind, entry.path)] = (entry.stamps, value)
        return value
