"""Which commit a revision is, and its tree: asked of the upstream, recorded, answered offline.

The upstream is asked (model_info with blobs) whenever a branch or tag is named; a commit id it handed out before is answered from the record, without asking:
a commit never changes. When the upstream is down, the last recorded commit of the branch is the
answer; with none recorded, the answer is a 503 that says why (`Unlisted`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from lawchatd.errors import in_words
from lawchatd.mirror.capped import read_capped
from lawchatd.mirror.trees import RepoRecord, Tree, TreeFile, load_record, save_record
from lawchatd.mirror.upstream import METADATA_TIMEOUT, Upstream, UpstreamError

log = logging.getLogger("lawchatd.mirror")

# Seconds a client is told to wait when the upstream is down: the mirror asks the upstream
# every second, and huggingface_hub retries a 5xx five times, each after Retry-After + 1 s.
RETRY_AFTER = 2
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# After the upstream failed a question, a recorded revision is answered without asking it for
# this long: a black-holed upstream costs its timeout once, not on every request.
QUIET_SECONDS = 5.0
_MAX_TROUBLE = 1024  # repos whose last upstream error is kept for /_mirror/status
_MAX_INFO = 16 << 20  # a model_info with blobs lists every file: 80,000 files fit


@dataclass(frozen=True)
class UpstreamTrouble:
    """The last time the upstream failed a repo's question, and why, in words."""

    at: float
    message: str


class Unlisted(UpstreamError):
    """No tree for a revision: the upstream refused it (status, code) or could not be asked."""


class Revisions:
    def __init__(self, folder: Path) -> None:
        self.folder = folder  # DIR/.lawchatd-mirror/trees
        self.upstream: Upstream | None = None  # set by the pull-through's lifetime
        self._records: dict[str, RepoRecord] = {}
        self._saving = asyncio.Lock()
        self.trouble: dict[str, UpstreamTrouble] = {}  # repos whose last question failed

    async def record(self, repo_id: str) -> RepoRecord:
        """The repo's record (kept in memory once it holds a tree: a name nobody lists, asked
        by anyone who can reach the mirror, costs nothing after the answer)."""
        if (kept := self._records.get(repo_id)) is not None:
            return kept
        loaded = await asyncio.to_thread(load_record, self._path(repo_id))
        if loaded.trees:
            return self._records.setdefault(repo_id, loaded)
        return loaded

    def note_down(self, repo_id: str, why: str) -> None:
        if repo_id not in self.trouble and len(self.trouble) >= _MAX_TROUBLE:
            del self.trouble[next(iter(self.trouble))]  # the oldest: bounded, whatever is asked
        self.trouble[repo_id] = UpstreamTrouble(time.time(), why)

    def note_up(self, repo_id: str) -> None:
        self.trouble.pop(repo_id, None)

    async def tree(self, repo_id: str, revision: str) -> Tree:
        """The tree of `revision` as the upstream gave it (recorded), or Unlisted."""
        record = await self.record(repo_id)
        if _COMMIT.fullmatch(revision) and revision in record.trees:
            return record.trees[revision]
        kept = record.at(revision)
        trouble = self.trouble.get(repo_id)
        if kept is not None and trouble and time.time() - trouble.at < QUIET_SECONDS:
            return kept  # the upstream just failed: no client waits METADATA_SECONDS again
        try:
            tree = await self._ask(repo_id, revision)
        except UpstreamError as exc:
            if exc.status != 502:
                raise Unlisted(exc.status, exc.code, exc.message) from exc
            self.note_down(repo_id, exc.message)
            if kept is not None:
                return kept  # offline: the commit recorded last
            log.warning("listing %s at %s: %s", repo_id, revision, exc.message)
            raise Unlisted(
                503,
                None,
                f"{exc.message}. The mirror has no record of {repo_id} at {revision} yet, so it "
                "cannot list it; try again when the upstream answers.",
            ) from exc
        self.note_up(repo_id)
        changed = tree.commit not in record.trees
        record.trees.setdefault(tree.commit, tree)  # a commit's tree never changes
        if not _COMMIT.fullmatch(revision) and record.refs.get(revision) != tree.commit:
            if revision in record.refs:
                log.info("%s: %s moved upstream to %s", repo_id, revision, tree.commit)
            record.refs[revision] = tree.commit
            changed = True
        if changed:
            self._records[repo_id] = record
            await self._save(repo_id, record)
        return record.trees[tree.commit]

    async def _save(self, repo_id: str, record: RepoRecord) -> None:
        try:
            async with self._saving:  # one writer at a time
                # Serialised here, on the loop: the record may change while the thread writes.
                data = record.to_json()
                await asyncio.to_thread(save_record, self._path(repo_id), data)
        except OSError as exc:
            log.warning("could not record the tree of %s: %s", repo_id, exc)

    def _path(self, repo_id: str) -> Path:
        return self.folder / f"{repo_id}.json"

    async def _ask(self, repo_id: str, revision: str) -> Tree:
        upstream = self.upstream
        assert upstream is not None
        path = f"/api/models/{repo_id}/revision/{quote(revision, safe='')}?blobs=true"
        url = URL(upstream.endpoint + path, encoded=True)
        try:
            async with upstream.session.get(
                url, headers=upstream.headers(url), timeout=METADATA_TIMEOUT
            ) as r:
                if r.status in (401, 403, 404):
                    code = r.headers.get("X-Error-Code")
                    message = (
                        r.headers.get("X-Error-Message") or f"the upstream answered {r.status}"
                    )
                    raise UpstreamError(r.status, code, message)
                if r.status != 200:
                    raise UpstreamError(
                        502, None, f"the upstream {upstream.endpoint} answered {r.status}"
                    )
                body = await read_capped(r, _MAX_INFO)  # never more than that in memory
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(
                502, None, f"the upstream {upstream.endpoint} is unreachable: {in_words(exc)}"
            ) from exc
        if body is None:
            raise UpstreamError(502, None, "the upstream's file list is too large")
        try:
            return await asyncio.to_thread(lambda: _parse(json.loads(body)))  # up to 16 MiB
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UpstreamError(
                502, None, f"the upstream did not list the repo like the Hub: {exc}"
            ) from exc


def _parse(info: Any) -> Tree:
    commit = info["sha"]
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise ValueError("no commit id")
    files: dict[str, TreeFile] = {}
    for s in info["siblings"]:
        lfs = s.get("lfs") or {}
        sha256 = lfs.get("sha256")
        if sha256 is not None and not _SHA256.fullmatch(str(sha256)):
            raise ValueError(f"a malformed sha256 for {s['rfilename']}")
        size = s.get("size", lfs.get("size"))
        if not isinstance(size, int):
            raise ValueError(f"no size for {s['rfilename']}")
        blob = s.get("blobId")
        files[str(s["rfilename"])] = TreeFile(size, sha256, blob if isinstance(blob, str) else None)
    return Tree(commit, files)
