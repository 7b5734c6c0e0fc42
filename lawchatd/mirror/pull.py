"""Pull-through: a file DIR lacks is fetched from the upstream once, shared, then kept in DIR.

Which file a revision holds is the upstream's word, recorded (revisions.py): every route
answers a revision with the upstream's commit and tree, offline too. Clients are served as the
bytes arrive (from the partial file, as far as it runs without a gap from the offset they asked
for), not once verified: a 4 GB fetch outlasts every client's read timeout. The file enters DIR
only after its sha256 (or git blob id) matched the upstream's, so DIR never holds bad bytes.
When the upstream goes away mid-fetch the fetch waits for it, asking every PROBE_SECONDS, and
goes on (from the bytes it has) as soon as it answers; clients waiting meanwhile get a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from aiohttp import web

from lawchatd.errors import in_words
from lawchatd.fetch import FetchOptions
from lawchatd.hub.session import NetworkSettings
from lawchatd.mirror.answers import FileMeta, Filling, InDir, Refusal, ToCdn
from lawchatd.mirror.digests import Digests
from lawchatd.mirror.engine_fetch import EngineFetch, FetchFailed
from lawchatd.mirror.index import RepoIndex
from lawchatd.mirror.inflight import Fetch
from lawchatd.mirror.landing import publish
from lawchatd.mirror.paths import may_create
from lawchatd.mirror.repo import Entry
from lawchatd.mirror.revisions import RETRY_AFTER, Revisions, Unlisted
from lawchatd.mirror.trees import Tree, TreeFile
from lawchatd.mirror.upstream import (
    Upstream,
    UpstreamError,
    UpstreamFile,
    UpstreamNetwork,
    upstream_session,
)

log = logging.getLogger("lawchatd.mirror")

STAGING = ".lawchatd-mirror"  # inside DIR (same file system, so the last move is a rename); hidden
TREES = "trees"
PROBE_SECONDS = 1.0  # while the upstream is down, a fetch asks again this often
OUTAGE_LIMIT = 6 * 3600.0  # a fetch waits this long for a dead upstream, then gives up
# The engine's own retries in a row before the mirror looks at the upstream itself: its backoff
# doubles up to 30 s, far longer than an office's clients should wait after the upstream is back.
ENGINE_RETRIES = 3
CLIENT_WAIT = 20.0  # seconds a client waits for bytes before it hears a 503 (a setting)


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
        client_wait: float = CLIENT_WAIT,
    ) -> None:
        self.index, self.digests = index, digests
        self.root = index.root
        self.endpoint, self._token = endpoint, token
        self.options = options or FetchOptions()
        self.client_wait = client_wait
        self.retry_after = RETRY_AFTER
        self._engine_options = dataclasses.replace(
            self.options, max_retries=min(self.options.max_retries, ENGINE_RETRIES)
        )
        self._network = UpstreamNetwork.of(endpoint, self.options.stall_timeout, network)
        self._repos = tuple(repos)  # fnmatch patterns of repos that may be fetched; () = all
        self.revisions = Revisions(self.root / STAGING / TREES)
        self._fetches: dict[str, Fetch] = {}  # in flight, by "<repo>/<path>"
        self._upstream: Upstream | None = None

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup_ctx: the upstream session, for the revisions and the fetches."""
        session = upstream_session(self._network)
        self._upstream = Upstream(session, self.endpoint, self._token)
        self.revisions.upstream = self._upstream
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

    async def tree(self, org: str, name: str, revision: str) -> Tree | Refusal:
        """The upstream's tree of `revision` (recorded; offline, the one recorded last)."""
        try:
            return await self.revisions.tree(f"{org}/{name}", revision)
        except Unlisted as exc:
            retry = self.retry_after if exc.status == 503 else None
            return Refusal(
                exc.status, exc.code, exc.message, _reason(exc.status, exc.message), retry
            )

    async def resolve(
        self, org: str, name: str, revision: str, relpath: str
    ) -> InDir | ToCdn | Refusal:
        """What to answer for a file at a revision: the upstream's tree says which bytes that
        is (DIR may hold others). LFS files go to /cdn/ while their fetch starts; small files
        are fetched whole first (they are small), then served from DIR."""
        tree = await self.tree(org, name, revision)
        if isinstance(tree, Refusal):
            return tree
        listed = tree.files.get(relpath)
        if listed is None:
            return Refusal(404, "EntryNotFound", f"{relpath} does not exist at {tree.commit}")
        file = _upstream_file(f"{org}/{name}", relpath, tree.commit, listed)
        if not await asyncio.to_thread(may_create, self.root, self._target(file)):
            return Refusal(404, "RepoNotFound", "Repository not found")  # a link out of DIR
        meta = _meta(file)
        entry = await self._local(file)
        if entry is None:
            if (refused := await self._cannot_fetch(file)) is not None:
                return refused
            fetch = self._start(file)
            if file.sha256 is None:
                assert fetch.task is not None
                try:
                    await asyncio.wait_for(asyncio.shield(fetch.task), self.client_wait)
                except TimeoutError:
                    return self.unavailable(relpath, fetch.waiting or "the upstream is slow")
                if fetch.failed:
                    message = f"fetching {relpath} from the upstream failed: {fetch.failed}"
                    return Refusal(502, None, message, _reason(502, message))
                entry = await self._entry(org, name, relpath)
                if entry is None:  # removed from DIR in the meantime
                    return Refusal(404, "EntryNotFound", "Entry not found")
        if file.sha256 is not None:
            return ToCdn(meta, relpath)
        assert entry is not None
        return InDir(entry, meta)

    async def _cannot_fetch(self, file: UpstreamFile) -> Refusal | None:
        """Why `file` cannot be fetched now (the upstream refuses it, or is down), or None."""
        fetch = self._fetches.get(_key(file))
        if fetch is not None and fetch.file.sha256 == file.sha256:
            return None if fetch.waiting is None else self.unavailable(file.relpath, fetch.waiting)
        assert self._upstream is not None
        try:  # the upstream's word on this file: gated, gone, or no answer at all
            await self._upstream.head(file.repo_id, file.commit, file.relpath)
        except UpstreamError as exc:
            if exc.status != 502:
                return Refusal(exc.status, exc.code, exc.message)
            self.revisions.note_down(file.repo_id, exc.message)
            return self.unavailable(file.relpath, exc.message)
        self.revisions.note_up(file.repo_id)
        return None

    def unavailable(self, relpath: str, why: str) -> Refusal:
        message = f"{relpath} is not in this mirror yet, and {why}"
        return Refusal(503, None, message, _reason(503, message), self.retry_after)

    async def source(
        self, org: str, name: str, relpath: str, sha256: str
    ) -> InDir | Filling | Refusal | None:
        """The bytes of `sha256` while they are being fetched (starting the fetch if need be);
        None when no recorded tree has that file."""
        repo_id = f"{org}/{name}"
        fetch = self._fetches.get(f"{repo_id}/{relpath}")
        if fetch is not None and fetch.file.sha256 == sha256:
            return Filling(fetch)
        record = await self.revisions.record(repo_id)
        found = [
            (commit, tree.files[relpath])
            for commit, tree in record.trees.items()
            if relpath in tree.files and tree.files[relpath].sha256 == sha256
        ]
        if not found:
            return None
        file = _upstream_file(repo_id, relpath, *found[0])
        if not await asyncio.to_thread(may_create, self.root, self._target(file)):
            return None
        if (entry := await self._local(file)) is not None:  # the fetch ended meanwhile
            return InDir(entry)
        if (refused := await self._cannot_fetch(file)) is not None:
            return refused
        return Filling(self._start(file))

    async def held(self, repo_id: str, relpath: str, listed: TreeFile) -> bool:
        return await self._local(_upstream_file(repo_id, relpath, "", listed)) is not None

    def fetching(self, repo_id: str) -> list[str]:
        return [f.file.relpath for f in self._fetches.values() if f.file.repo_id == repo_id]

    def fetches(self) -> list[dict]:
        return [
            {
                "repo": f.file.repo_id,
                "path": f.file.relpath,
                "size": f.file.size,
                "downloaded": f.transfer.downloaded(),
                "sha256": f.file.sha256,
                "started_at": f.started,
                "waiting": f.waiting,
            }
            for f in self._fetches.values()
        ]

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
        key = _key(file)
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
            options=self._engine_options, on_change=on_change,
        )  # fmt: skip

    async def _run(
        self, key: str, fetch: Fetch, after: asyncio.Task[Path | None] | None = None
    ) -> Path | None:
        """Fetch, verify, publish; never raises but CancelledError (`fetch.failed` says why).
        `after`: a cancelled fetch of an older version of the file, to wait for first."""
        try:
            if after is not None:
                await asyncio.gather(after, return_exceptions=True)
            while True:
                try:
                    verified = await fetch.transfer.run()
                    break
                except FetchFailed:
                    if not await self._wait_for_upstream(fetch):
                        raise
                # Again from the journal: the bytes fetched before the outage are kept.
                fetch.transfer = self._transfer(fetch.file, fetch.notify)
            await asyncio.to_thread(publish, verified, fetch.target, fetch.file, self.root)
            log.info("fetched %s: verified, now served from %s", key, fetch.target)
            return fetch.target
        except asyncio.CancelledError:
            fetch.failed = "the mirror is shutting down"
            raise
        except (FetchFailed, OSError) as exc:
            fetch.failed = in_words(exc)
            log.warning(
                "fetching %s failed: %s (the partial is kept for the next try)", key, fetch.failed
            )
            return None
        finally:
            if self._fetches.get(key) is fetch:
                del self._fetches[key]
            fetch.waiting = None
            fetch.notify()

    async def _wait_for_upstream(self, fetch: Fetch) -> bool:
        """After a failed fetch: False if the upstream answers (the failure was its answer);
        else wait until it answers again, asking every PROBE_SECONDS, and True."""
        file, since, waited = fetch.file, time.monotonic(), False
        while (why := await self._unreachable(file)) is not None:
            waited = True
            if time.monotonic() - since > OUTAGE_LIMIT:
                return False
            if fetch.waiting is None:
                log.warning("fetching %s/%s waits for the upstream: %s", file.repo_id,
                            file.relpath, why)  # fmt: skip
            fetch.waiting = why
            self.revisions.note_down(file.repo_id, why)
            fetch.notify()
            await asyncio.sleep(PROBE_SECONDS)
        if fetch.waiting is not None:
            log.info("the upstream answers again: fetching %s/%s goes on", file.repo_id,
                     file.relpath)  # fmt: skip
        fetch.waiting = None
        self.revisions.note_up(file.repo_id)
        return waited

    async def _unreachable(self, file: UpstreamFile) -> str | None:
        """Why the upstream does not answer for `file` now; None when it answers."""
        assert self._upstream is not None
        try:
            await self._upstream.head(file.repo_id, file.commit, file.relpath)
        except UpstreamError as exc:
            return exc.message if exc.status == 502 else None
        return None


def _key(file: UpstreamFile) -> str:
    return f"{file.repo_id}/{file.relpath}"


def _upstream_file(repo_id: str, relpath: str, commit: str, listed: TreeFile) -> UpstreamFile:
    blob = None if listed.sha256 else listed.blob_oid  # an LFS file's blob id is its pointer's
    return UpstreamFile(repo_id, relpath, commit, listed.size, listed.sha256, blob)


def _meta(file: UpstreamFile) -> FileMeta:
    etag = f'"{file.sha256 or file.blob_oid or ""}"'
    return FileMeta(file.commit, file.sha256, file.size, etag)


def _reason(status: int, message: str) -> str:
    """The status line: lawchatd's daemon (and some clients) show only that."""
    phrase = {502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
    return f"{phrase}: {message}"[:200]
