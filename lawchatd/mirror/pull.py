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

import aiohttp
from aiohttp import web

from lawchatd.fetch import FetchOptions
from lawchatd.fetch.errors import describe
from lawchatd.hub.session import NetworkSettings
from lawchatd.mirror.answers import FileMeta, Filling, Forwarded, InDir, Refusal, ToCdn
from lawchatd.mirror.capped import API_ANSWER_LIMIT, read_capped
from lawchatd.mirror.digests import Digests
from lawchatd.mirror.engine_fetch import EngineFetch, FetchFailed
from lawchatd.mirror.index import RepoIndex
from lawchatd.mirror.inflight import Fetch
from lawchatd.mirror.landing import load_commits, publish, save_json
from lawchatd.mirror.paths import may_create
from lawchatd.mirror.repo import Entry
from lawchatd.mirror.upstream import (
    METADATA_TIMEOUT,
    Upstream,
    UpstreamError,
    UpstreamFile,
    UpstreamNetwork,
    upstream_session,
)

log = logging.getLogger("lawchatd.mirror")

STAGING = ".lawchatd-mirror"  # inside DIR (same file system, so the last move is a rename); hidden
COMMITS = "upstream-commits.json"


class PullThrough:
    def __init__(
        self,
        index: RepoIndex,
        digests: Digests,
        endpoint: str,
        token: str | None,
        options: FetchOptions | None = None,
        repos: Sequence[str] = (),
        network: NetworkSettings | None = None,
    ) -> None:
        self.index, self.digests = index, digests
        self.root = index.root
        self.endpoint, self._token = endpoint, token
        self.options = options or FetchOptions()
        self._network = UpstreamNetwork.of(endpoint, self.options.stall_timeout, network)
        self._repos = tuple(repos)  # fnmatch patterns of repos that may be fetched; () = all
        self._commits: dict[str, set[str]] = {}  # upstream commits handed out, per repo
        self._saving = asyncio.Lock()
        self._fetches: dict[str, Fetch] = {}  # in flight, by "<repo>/<path>"
        self._upstream: Upstream | None = None

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: the upstream session, and the commits handed out before."""
        session = upstream_session(self._network)
        self._upstream = Upstream(session, self.endpoint, self._token)
        self._commits = await asyncio.to_thread(load_commits, self.root / STAGING / COMMITS)
        try:
            yield
        finally:
            tasks = [f.task for f in self._fetches.values() if f.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # partials kept for next time
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
                await asyncio.to_thread(save_json, self.root / STAGING / COMMITS, snapshot)
        except OSError as exc:
            log.warning("could not record upstream commits: %s", exc)

    def status(self) -> list[dict]:
        return [
            {
                "repo": f.file.repo_id,
                "path": f.file.relpath,
                "size": f.file.size,
                "downloaded": f.transfer.downloaded(),
                "sha256": f.file.sha256,
                "started_at": f.started,
            }
            for f in self._fetches.values()
        ]

    async def forward_api(self, request: web.Request) -> Forwarded | None:
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
                if (body := await read_capped(r)) is None:
                    log.warning(
                        "the upstream's answer to %s is larger than %d MiB: answering from DIR",
                        request.rel_url.path, API_ANSWER_LIMIT >> 20,
                    )  # fmt: skip
                    return None
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
        return Forwarded(body, headers)

    async def resolve(
        self, org: str, name: str, revision: str, relpath: str
    ) -> InDir | ToCdn | Refusal:
        """What to answer for a file at an upstream revision: the upstream says which bytes
        that is (DIR may hold others). LFS files go to /cdn/ while their fetch starts; small
        files are fetched whole first (they are small), then served from DIR."""
        assert self._upstream is not None
        repo_id = f"{org}/{name}"
        try:
            file = await self._upstream.head(repo_id, revision, relpath)
        except UpstreamError as exc:
            return await self._unanswered(exc, org, name, revision, relpath)
        await self._remember(file.repo_id, file.commit)
        if not await asyncio.to_thread(may_create, self.root, self._target(file)):
            return Refusal(404, "RepoNotFound", "Repository not found")  # a link out of DIR
        if file.sha256 is not None:
            if await self._local(file) is None:
                self._start(file)
            return ToCdn(FileMeta(file.commit, file.sha256, file.size, f'"{file.sha256}"'), relpath)
        entry = await self._local(file)
        if entry is None:
            fetch = self._start(file)
            assert fetch.task is not None
            await asyncio.shield(fetch.task)  # returns None on failure, with fetch.failed set
            if fetch.failed:
                message = f"fetching {relpath} from the upstream failed: {fetch.failed}"
                return Refusal(502, None, message)
            entry = await self._entry(org, name, relpath)
        if entry is None:  # removed from DIR in the meantime
            return Refusal(404, "EntryNotFound", "Entry not found")
        return InDir(entry, FileMeta(file.commit, None, file.size, f'"{file.blob_oid}"'))

    async def _unanswered(
        self, exc: UpstreamError, org: str, name: str, revision: str, relpath: str
    ) -> InDir | Refusal:
        if exc.status != 502:
            return Refusal(exc.status, exc.code, exc.message)
        entry = await self._entry(org, name, relpath)
        if entry is not None and self.knows_commit(f"{org}/{name}", revision):
            return InDir(entry)  # offline: DIR's copy of a commit handed out before
        log.warning("pull-through of %s/%s/%s: %s", org, name, relpath, exc.message)
        # lawchatd's daemon shows the status line: say there what went wrong.
        return Refusal(502, None, exc.message, reason=f"Bad Gateway: {exc.message}"[:200])

    async def source(
        self, org: str, name: str, relpath: str, sha256: str
    ) -> InDir | Filling | None:
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
            if not await asyncio.to_thread(may_create, self.root, self._target(file)):
                return None
            if (entry := await self._local(file)) is not None:  # the fetch ended meanwhile
                return InDir(entry)
            fetch = self._start(file)
        return Filling(fetch)

    # ---- fetching ---------------------------------------------------------------------------

    async def _entry(self, org: str, name: str, relpath: str) -> Entry | None:
        repo = await self.index.get(org, name, relpath)
        return repo.entries.get(relpath) if repo else None

    async def _local(self, file: UpstreamFile) -> Entry | None:
        """DIR's entry when it holds exactly this file (a fetch may have finished meanwhile)."""
        org, name = file.repo_id.split("/")
        entry = await self._entry(org, name, file.relpath)
        if entry is None or entry.size != file.size:
            return None
        if file.sha256 is not None:
            same = await self.digests.sha256(entry) == file.sha256
        else:
            same = file.blob_oid is None or await self.digests.blob_oid(entry) == file.blob_oid
        return entry if same else None

    def _target(self, file: UpstreamFile) -> Path:
        return self.root / file.repo_id / file.relpath

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
        fetch.transfer = self._transfer(file, fetch.notify)
        fetch.task = asyncio.create_task(self._run(key, fetch, after=older))
        self._fetches[key] = fetch
        log.info("fetching %s (%d bytes) from %s", key, file.size, self.endpoint)
        return fetch

    def _transfer(self, file: UpstreamFile, on_change: Callable[[], None]) -> EngineFetch:
        assert self._upstream is not None
        return EngineFetch(
            hub=self._upstream.hub, file=file, staging=self.root / STAGING,
            options=self.options, on_change=on_change,
        )  # fmt: skip

    async def _run(
        self, key: str, fetch: Fetch, after: asyncio.Task[Path | None] | None = None
    ) -> Path | None:
        """Fetch, verify, publish; never raises but CancelledError (`fetch.failed` says why).
        `after`: a cancelled fetch of an older version of the file, to wait for first."""
        try:
            if after is not None:
                await asyncio.gather(after, return_exceptions=True)
            verified = await fetch.transfer.run()
            await asyncio.to_thread(publish, verified, fetch.target, fetch.file, self.root)
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
