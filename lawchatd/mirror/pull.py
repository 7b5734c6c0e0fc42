"""Pull-through: a file DIR lacks is fetched from the upstream once, shared, then kept in DIR.

Clients are served as the bytes arrive (from the partial file, as far as it runs without a gap
from the offset they asked for), not once verified: a 4 GB fetch outlasts every client's read
timeout. The file enters DIR only after its sha256 (or git blob id) matched the upstream's, so
DIR never holds bad bytes; a client that streamed a fetch that then failed verification sees its
connection cut short, and lawchatd (which checks the sha256 itself) starts that part again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from lawchatd.fetch.errors import describe
from lawchatd.mirror.body import FileSource, Source
from lawchatd.mirror.core import Core, error
from lawchatd.mirror.fetcher import (
    EngineFetch,
    FetchFailed,
    FetchOptions,
    upstream_session,
)
from lawchatd.mirror.landing import load_commits, publish, save_json
from lawchatd.mirror.partial import Fetch, Fetcher, PartialSource
from lawchatd.mirror.paths import may_create, open_inside
from lawchatd.mirror.repo import Entry
from lawchatd.mirror.stream_fetch import StreamFetch
from lawchatd.mirror.upstream import METADATA_TIMEOUT, Upstream, UpstreamError, UpstreamFile
from lawchatd.state.store import Store

if TYPE_CHECKING:
    from lawchatd.mirror.files import Files

log = logging.getLogger("lawchatd.mirror")

STAGING = ".lawchatd-mirror"  # inside DIR (same file system, so the last move is a rename); hidden
COMMITS = "upstream-commits.json"


class PullThrough:
    def __init__(
        self,
        core: Core,
        endpoint: str,
        token: str | None,
        options: FetchOptions | None = None,
        repos: Sequence[str] = (),
    ) -> None:
        self.core, self.endpoint, self._token = core, endpoint, token
        self.options = options or FetchOptions()
        self._repos = tuple(repos)  # fnmatch patterns of repos that may be fetched; () = all
        self._commits: dict[str, set[str]] = {}  # upstream commits handed out, per repo
        self._saving = asyncio.Lock()
        self._fetches: dict[str, Fetch] = {}  # in flight, by "<repo>/<path>"
        self._upstream: Upstream | None = None
        self._store: Store | None = None

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: the upstream session and the downloader's store."""
        session = upstream_session(self.options, self.endpoint)
        self._upstream = Upstream(session, self.endpoint, self._token)
        # The downloader's state (parts done per file), so fetches resume across restarts.
        self._store = await Store.open(self.core.root / STAGING / "fetches.sqlite3")
        self._commits = await asyncio.to_thread(load_commits, self.core.root / STAGING / COMMITS)
        try:
            yield
        finally:
            tasks = [f.task for f in self._fetches.values() if f.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # partials kept for next time
            await self._store.close()
            await session.close()

    # ---- what the routes ask --------------------------------------------------------------

    def allows(self, org: str, name: str) -> bool:
        """Whether this repo may be filled from the upstream (--upstream-repo)."""
        repo_id = f"{org}/{name}"
        return not self._repos or any(fnmatch.fnmatchcase(repo_id, p) for p in self._repos)

    def knows_commit(self, repo_id: str, revision: str) -> bool:
        return revision in self._commits.get(repo_id, ())

    async def _remember(self, repo_id: str, commit: str) -> None:
        """Keep an upstream commit handed to clients, across restarts: offline, it still resolves."""
        if self.knows_commit(repo_id, commit):
            return
        self._commits.setdefault(repo_id, set()).add(commit)
        snapshot = {repo: sorted(commits) for repo, commits in self._commits.items()}
        try:
            async with self._saving:  # one writer of the file at a time
                await asyncio.to_thread(save_json, self.core.root / STAGING / COMMITS, snapshot)
        except OSError as exc:
            log.warning("could not record upstream commits: %s", exc)

    def status(self) -> list[dict]:
        return [
            {
                "repo": f.file.repo_id,
                "path": f.file.relpath,
                "size": f.file.size,
                "downloaded": f.fetcher.downloaded(),
                "sha256": f.file.sha256,
                "started_at": f.started,
            }
            for f in self._fetches.values()
        ]

    async def forward_api(self, request: web.Request) -> web.Response | None:
        """The upstream's answer to an /api/ call; None (answer from DIR) unless it is a 200.

        The upstream knows the whole repo, DIR only what was fetched so far: snapshot_download
        must see every file. Commits it names are remembered, so `revision=<commit>` resolves.
        A repo only DIR has (copied in by hand) is still answered from DIR.
        """
        assert self._upstream is not None
        url = self._upstream.endpoint_url(request.rel_url)
        try:
            async with self._upstream.session.get(
                url, headers=self._upstream.headers(url), timeout=METADATA_TIMEOUT
            ) as r:
                if r.status != 200:
                    return None
                body = await r.read()
                headers = {k: r.headers[k] for k in ("Content-Type", "Link") if k in r.headers}
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "the upstream %s is unreachable (%s): answering from DIR", self.endpoint, exc
            )
            return None
        if "Link" in headers:  # the next page, through this mirror too
            headers["Link"] = headers["Link"].replace(self.endpoint, str(request.url.origin()))
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            sha = json.loads(body).get("sha")  # model_info names the commit (a tree is a list)
            if isinstance(sha, str) and len(sha) == 40:
                await self._remember(_repo_of(request), sha)
        return web.Response(status=200, body=body, headers=headers)

    async def resolve(
        self, request: web.Request, files: Files, org: str, name: str, revision: str, relpath: str
    ) -> web.StreamResponse:
        from lawchatd.mirror.files import FileMeta

        assert self._upstream is not None
        try:
            file = await self._upstream.head(f"{org}/{name}", revision, relpath)
        except UpstreamError as exc:
            if exc.status != 502:
                return error(exc.status, exc.code, exc.message)
            repo = await self.core.scan(org, name)
            entry = repo.entries.get(relpath) if repo else None
            if repo and entry and self.knows_commit(f"{org}/{name}", revision):
                return await files.answer_local(request, repo, entry)  # offline: DIR's copy
            log.warning("pull-through of %s/%s/%s: %s", org, name, relpath, exc.message)
            # lawchatd's daemon shows the status line: say there what went wrong.
            return error(502, None, exc.message, reason=f"Bad Gateway: {exc.message}"[:200])
        await self._remember(file.repo_id, file.commit)
        if not await asyncio.to_thread(may_create, self.core.root, self._target(file)):
            return error(404, "RepoNotFound", "Repository not found")  # a link out of DIR
        if file.sha256 is not None:
            if await self._local(file) is None:
                self._start(file)
            meta = FileMeta(file.commit, file.sha256, file.size, f'"{file.sha256}"')
            return files.redirect(request, meta, relpath)
        # A small file: fetched whole (it is small), then answered from DIR like any other.
        entry = await self._local(file)
        if entry is None:
            fetch = self._start(file)
            assert fetch.task is not None
            await asyncio.shield(fetch.task)  # returns None on failure, with fetch.failed set
            if fetch.failed:
                return error(
                    502, None, f"fetching {relpath} from the upstream failed: {fetch.failed}"
                )
            repo = await self.core.scan(org, name)
            entry = repo.entries.get(relpath) if repo else None
        meta = FileMeta(file.commit, None, file.size, f'"{file.blob_oid}"')
        if entry is None:  # removed from DIR in the meantime
            return error(404, "EntryNotFound", "Entry not found")
        return await files.serve(request, meta, await files.open_local(entry), entry.size)

    async def source(
        self, org: str, name: str, relpath: str, sha256: str
    ) -> tuple[Source, int] | None:
        """The bytes of `sha256` while they are being fetched (starting the fetch if need be)."""
        fetch = self._fetches.get(f"{org}/{name}/{relpath}")
        if fetch is None or fetch.file.sha256 != sha256:
            assert self._upstream is not None
            try:
                file = await self._upstream.head(f"{org}/{name}", "main", relpath)
            except UpstreamError:
                return None
            if file.sha256 != sha256:
                return None
            if not await asyncio.to_thread(may_create, self.core.root, self._target(file)):
                return None
            if await self._local(file) is not None:  # the fetch ended since the caller looked
                target = self.core.root / file.repo_id / relpath
                fd = await asyncio.to_thread(open_inside, self.core.root, target)
                return FileSource(fd), file.size
            fetch = self._start(file)
        return PartialSource(fetch), fetch.file.size

    # ---- fetching ---------------------------------------------------------------------------

    async def _local(self, file: UpstreamFile) -> Entry | None:
        """DIR's entry when it holds exactly this file (a fetch may have finished meanwhile)."""
        repo = await self.core.scan(*file.repo_id.split("/"))
        entry = repo.entries.get(file.relpath) if repo else None
        if entry is None or entry.size != file.size:
            return None
        if file.sha256 is not None:
            same = await self.core.digests.sha256(entry) == file.sha256
        else:
            same = file.blob_oid is None or await self.core.digests.blob_oid(entry) == file.blob_oid
        return entry if same else None

    def _target(self, file: UpstreamFile) -> Path:
        return self.core.root / file.repo_id / file.relpath

    def _start(self, file: UpstreamFile) -> Fetch:
        key = f"{file.repo_id}/{file.relpath}"
        fetch = self._fetches.get(key)
        if fetch is not None and fetch.file.sha256 == file.sha256:
            return fetch  # one fetch per file, however many clients ask
        # The upstream file changed under a running fetch: both would use one partial file,
        # so the old fetch is stopped (its clients are cut) before the new one starts.
        older = fetch.task if fetch is not None else None
        if older is not None:
            older.cancel()
        fetch = Fetch(file, self._target(file))
        fetch.fetcher = self._fetcher(file, fetch.notify)
        fetch.task = asyncio.create_task(self._run(key, fetch, after=older))
        self._fetches[key] = fetch
        log.info("fetching %s (%d bytes) from %s", key, file.size, self.endpoint)
        return fetch

    def _fetcher(self, file: UpstreamFile, on_change: Callable[[], None]) -> Fetcher:
        assert self._upstream is not None and self._store is not None
        staging = self.core.root / STAGING
        if file.sha256 is not None:  # LFS: parallel, resumable, hashed as it arrives
            return EngineFetch(
                store=self._store, session=self._upstream.session, endpoint=self.endpoint,
                token=self._token, staging=staging, repo_id=file.repo_id, relpath=file.relpath,
                commit=file.commit, size=file.size, sha256=file.sha256, options=self.options,
                on_change=on_change,
            )  # fmt: skip
        return StreamFetch(
            upstream=self._upstream, file=file, staging=staging, options=self.options,
            on_change=on_change,
        )  # fmt: skip

    async def _run(
        self, key: str, fetch: Fetch, after: asyncio.Task[Path | None] | None = None
    ) -> Path | None:
        """Fetch, verify, publish; never raises but CancelledError (`fetch.failed` says why).
        `after`: a cancelled fetch of an older version of the file, to wait for first."""
        try:
            if after is not None:
                await asyncio.gather(after, return_exceptions=True)
            verified = await fetch.fetcher.run()
            await asyncio.to_thread(publish, verified, fetch.target, fetch.file, self.core.root)
            log.info("fetched %s: verified, now served from %s", key, fetch.target)
            return fetch.target
        except asyncio.CancelledError:
            fetch.failed = "the mirror is shutting down"
            raise
        except (FetchFailed, OSError) as exc:
            fetch.failed = describe(exc)
            log.warning(
                "fetching %s failed: %s (the partial is kept for the next try)", key, fetch.failed
            )
            return None
        finally:
            if self._fetches.get(key) is fetch:
                del self._fetches[key]
            fetch.notify()


def _repo_of(request: web.Request) -> str:
    return f"{request.match_info['org']}/{request.match_info['repo']}"
