"""A plain fetch for small (non-LFS) files, README.md or config.json: one connection, resumed
with Range, the bytes checked against the upstream's git blob id before they reach DIR.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
from yarl import URL

from lawchatd.fetch.errors import describe
from lawchatd.fetch.fetcher import backoff_delay
from lawchatd.fetch.partial import PartialFile
from lawchatd.mirror.digests import blob_oid_file
from lawchatd.mirror.engine_fetch import FetchFailed, FetchOptions
from lawchatd.mirror.upstream import Upstream, UpstreamFile

log = logging.getLogger("lawchatd.mirror")


class StreamFetch:
    def __init__(
        self,
        *,
        upstream: Upstream,
        file: UpstreamFile,
        staging: Path,
        options: FetchOptions,
        on_change: Callable[[], None],
    ) -> None:
        self._upstream, self._file, self._options = upstream, file, options
        self._on_change = on_change
        self.size = file.size
        self.verified_file = staging / file.repo_id / "stream" / file.relpath
        self.part_file = self.verified_file.with_name(self.verified_file.name + ".part")
        self._written = 0

    def downloaded(self) -> int:
        return self._written

    def available(self, offset: int) -> int:
        return max(offset, self._written)

    async def run(self) -> Path:
        self._written = await asyncio.to_thread(_prepare, self.part_file, self.size)
        failures = 0
        while self._written < self.size:
            before = self._written
            try:
                await self._stream()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                failures = 1 if self._written > before else failures + 1
                if failures > self._options.max_retries:
                    raise FetchFailed(f"connection to the upstream lost: {describe(exc)}") from exc
                await asyncio.sleep(backoff_delay(failures, exc, self._options.retry_backoff))
        problem = await asyncio.to_thread(_check, self.part_file, self._file)
        if problem:
            await asyncio.to_thread(self.part_file.unlink, missing_ok=True)
            raise FetchFailed(problem)
        await asyncio.to_thread(os.replace, self.part_file, self.verified_file)
        return self.verified_file

    async def _stream(self) -> None:
        session, file = self._upstream.session, self._file
        url = self._upstream.resolve_url(file.repo_id, file.commit, file.relpath)
        for _ in range(5):  # redirects, followed by hand: the token goes to the upstream only
            headers = self._upstream.headers(url)
            if self._written:
                headers["Range"] = f"bytes={self._written}-"
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                if 300 <= resp.status < 400 and "Location" in resp.headers:
                    url = url.join(URL(resp.headers["Location"], encoded=True))
                    continue
                await self._take(resp)
                return
        raise FetchFailed(f"too many redirects fetching {file.relpath}")

    async def _take(self, resp: aiohttp.ClientResponse) -> None:
        if 400 <= resp.status < 500 and resp.status != 429:
            raise FetchFailed(f"the upstream answered {resp.status} for {self._file.relpath}")
        if resp.status not in (200, 206):
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        # The engine's PartialFile: whole writes, and the descriptor is closed only after a
        # cancelled write's thread has returned (never under a reused descriptor number).
        partial = PartialFile(self.part_file)
        whole = resp.status == 200  # the whole file is coming: never append it to a partial
        await partial.open(truncate=whole)
        try:
            if whole:
                self._written = 0
            async for chunk in resp.content.iter_chunked(1 << 20):
                self._written += await partial.write([chunk], self._written)
                self._on_change()
        finally:
            await asyncio.shield(partial.aclose())


def _prepare(part: Path, size: int) -> int:
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab") as f:
        if f.tell() > size:
            f.truncate(0)
        return min(f.tell(), size)


def _check(path: Path, file: UpstreamFile) -> str | None:
    data_size = path.stat().st_size
    if data_size != file.size:
        return f"size mismatch: the upstream said {file.size} bytes, got {data_size}"
    if file.blob_oid:
        ok = blob_oid_file(path) == file.blob_oid
        return None if ok else f"git blob id mismatch for {file.relpath}"
    return None
