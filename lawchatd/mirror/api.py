"""The Hub's JSON API as huggingface_hub calls it: model_info, revisions, tree, refs.

Shapes follow the Hub's answers (huggingface_hub hf_api.py: ModelInfo, RepoFile, RepoFolder).
Every route answers from a Listing: with --upstream, the upstream's recorded tree of the
revision (the whole repo, whatever DIR holds so far); without, the files in DIR.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from lawchatd.mirror.answers import Refusal
from lawchatd.mirror.core import MAIN, Core, error, refused
from lawchatd.mirror.paths import BadPath, folders_of, segments
from lawchatd.mirror.repo import Entry, git_blob_oid, lfs_pointer
from lawchatd.mirror.trees import Tree


@dataclass(frozen=True)
class Listed:
    size: int
    oid: str  # the git blob id (an LFS file's is its pointer's)
    sha256: str | None  # LFS files


@dataclass(frozen=True)
class Listing:
    repo_id: str
    commit: str
    files: dict[str, Listed]
    modified_s: float

    def folders(self) -> set[str]:
        return folders_of(self.files)


class Api:
    def __init__(self, core: Core) -> None:
        self.core = core

    def routes(self) -> list[web.RouteDef]:
        base = "/api/models/{org}/{repo}"
        return [
            web.get(base, self.info),
            web.get(base + "/revision/{revision}", self.info),
            web.get(base + "/refs", self.refs),
            web.get(base + "/commits/{revision}", self.commits),
            web.get(base + "/auth-check", self.auth_check),
            web.post(base + "/paths-info/{revision}", self.paths_info),
            web.get(base + "/tree/{revision}", self.tree),
            web.get(base + "/tree/{revision}/{path:.+}", self.tree),
        ]

    async def _listing(self, request: web.Request) -> Listing:
        core = self.core
        core.require_token(request)
        org, name = core.repo_id(request)
        repo_id, revision = f"{org}/{name}", request.match_info.get("revision", MAIN)
        if core.pull is not None and core.pull.allows(org, name):
            tree = await core.pull.tree(org, name, revision)
            if isinstance(tree, Tree):
                return _of_tree(repo_id, tree)
            if not await self._only_in_dir(tree, org, name):
                raise refused(tree)
        repo = await core.repo(request)
        commit = await core.check_revision(repo, revision)
        files = {rel: await self._listed(e) for rel, e in sorted(repo.entries.items())}
        modified = max((e.mtime_ns for e in repo.entries.values()), default=0) / 1e9
        return Listing(repo_id, commit, files, modified)

    async def _only_in_dir(self, refusal: Refusal, org: str, name: str) -> bool:
        """A repo the upstream does not have, copied into DIR by hand: DIR answers for it."""
        return refusal.code == "RepoNotFound" and await self.core.index.scan(org, name) is not None

    async def _listed(self, entry: Entry) -> Listed:
        if not entry.lfs:
            return Listed(entry.size, await self.core.digests.blob_oid(entry), None)
        sha = await self.core.digests.sha256(entry)
        # The git blob a Hub repo stores for an LFS file is this pointer; its sha1 is the oid.
        return Listed(entry.size, git_blob_oid(lfs_pointer(sha, entry.size)), sha)

    async def info(self, request: web.Request) -> web.Response:
        listing = await self._listing(request)
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = [
            _sibling(path, item) if blobs else {"rfilename": path}
            for path, item in listing.files.items()
        ]
        repo_id = listing.repo_id
        return web.json_response(
            {
                "_id": listing.commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": listing.commit,
                "lastModified": _iso(listing.modified_s),
                "private": False,
                "gated": False,
                "disabled": False,
                "tags": [],
                "library_name": "gguf" if any(p.endswith(".gguf") for p in listing.files) else None,
                "siblings": siblings,
                "usedStorage": sum(item.size for item in listing.files.values()),
            }
        )

    async def refs(self, request: web.Request) -> web.Response:
        listing = await self._listing(request)
        branch = {"name": MAIN, "ref": f"refs/heads/{MAIN}", "targetCommit": listing.commit}
        return web.json_response({"branches": [branch], "converts": [], "tags": []})

    async def commits(self, request: web.Request) -> web.Response:
        listing = await self._listing(request)
        # The mirror keeps no history: the one commit is the revision asked for.
        commit = {
            "id": listing.commit,
            "title": "Files as the mirror knows them",
            "message": "",
            "authors": [{"user": "lawchatd-mirror"}],
            "date": _iso(listing.modified_s),
        }
        return web.json_response([commit])

    async def auth_check(self, request: web.Request) -> web.Response:
        await self._listing(request)  # 401 without the token, 404 for a repo it does not have
        return web.json_response({})

    async def paths_info(self, request: web.Request) -> web.Response:
        listing = await self._listing(request)
        form = await request.post()
        folders = listing.folders()
        items: list[dict[str, Any]] = []
        for raw in form.getall("paths", []):
            if not isinstance(raw, str):
                continue
            path = raw.strip("/")
            if path in listing.files:
                items.append(_tree_file(path, listing.files[path]))
            elif path in folders:
                items.append({"type": "directory", "oid": _folder_oid(listing, path), "path": path})
        return web.json_response(items)

    async def tree(self, request: web.Request) -> web.Response:
        listing = await self._listing(request)
        try:
            base = (
                "/".join(segments(request.match_info["path"]))
                if "path" in request.match_info
                else ""
            )
        except BadPath:
            return error(400, None, "Invalid path")
        folders = listing.folders()
        if base and base not in folders:
            return error(404, "EntryNotFound", f"{base} does not exist on this revision")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        items: list[dict[str, Any]] = [
            {"type": "directory", "oid": _folder_oid(listing, f), "size": 0, "path": f}
            for f in sorted(folders)
            if _listed(f, base, recursive)
        ]
        items += [
            _tree_file(path, item)
            for path, item in listing.files.items()
            if _listed(path, base, recursive)
        ]
        items.sort(key=lambda item: item["path"])
        return web.json_response(items)


def _of_tree(repo_id: str, tree: Tree) -> Listing:
    files = {}
    for path, f in sorted(tree.files.items()):
        oid = f.blob_oid
        if oid is None:  # an upstream that names no blob id: the one the Hub would give
            oid = git_blob_oid(lfs_pointer(f.sha256, f.size)) if f.sha256 else "0" * 40
        files[path] = Listed(f.size, oid, f.sha256)
    return Listing(repo_id, tree.commit, files, tree.recorded_at)


def _tree_file(path: str, item: Listed) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "size": item.size, "path": path, "oid": item.oid}
    if item.sha256 is not None:
        pointer = lfs_pointer(item.sha256, item.size)
        entry["lfs"] = {"oid": item.sha256, "size": item.size, "pointerSize": len(pointer)}
    return entry


def _sibling(path: str, item: Listed) -> dict[str, Any]:
    sibling: dict[str, Any] = {"rfilename": path, "size": item.size, "blobId": item.oid}
    if item.sha256 is not None:
        pointer = lfs_pointer(item.sha256, item.size)
        sibling["lfs"] = {"sha256": item.sha256, "size": item.size, "pointerSize": len(pointer)}
    return sibling


def _listed(path: str, base: str, recursive: bool) -> bool:
    prefix = f"{base}/" if base else ""
    if not path.startswith(prefix):
        return False
    return recursive or "/" not in path[len(prefix) :]


def _folder_oid(listing: Listing, folder: str) -> str:
    # Not git's tree hash, but stable for the same content, which is what clients compare.
    inside = sorted(p for p in listing.files if p.startswith(folder + "/"))
    return hashlib.sha1(f"{listing.commit}:{folder}:{inside}".encode()).hexdigest()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
