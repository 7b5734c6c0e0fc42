"""The Hub's JSON API as huggingface_hub calls it: model_info, revisions, tree, refs.

Shapes follow the Hub's answers (huggingface_hub hf_api.py: ModelInfo, RepoFile, RepoFolder).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from lawchatd.mirror.core import MAIN, Core, error
from lawchatd.mirror.paths import BadPath, segments
from lawchatd.mirror.repo import Entry, Repo, git_blob_oid, lfs_pointer


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

    async def _repo_at(self, request: web.Request) -> tuple[Repo, str]:
        self.core.require_token(request)
        org, name = self.core.repo_id(request)
        repo = await self.core.repo(request)
        revision = request.match_info.get("revision", MAIN)
        self.core.check_revision(repo, revision, org, name)
        return repo, f"{org}/{name}"

    async def _forwarded(self, request: web.Request) -> web.Response | None:
        """With --upstream, the upstream answers for the whole repo (DIR holds only a part)."""
        if self.core.pull is None:
            return None
        self.core.require_token(request)
        org, name = self.core.repo_id(request)  # refuse bad names before they go anywhere
        if not self.core.pull.allows(org, name):
            return None
        forwarded = await self.core.pull.forward_api(request)
        if forwarded is None:
            return None
        return web.Response(status=200, body=forwarded.body, headers=forwarded.headers)

    async def info(self, request: web.Request) -> web.Response:
        if (forwarded := await self._forwarded(request)) is not None:
            return forwarded
        repo, repo_id = await self._repo_at(request)
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = [
            await self._sibling(e) if blobs else {"rfilename": e.relpath}
            for e in repo.entries.values()
        ]
        modified = max((e.mtime_ns for e in repo.entries.values()), default=0)
        return web.json_response(
            {
                "_id": repo.commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": repo.commit,
                "lastModified": _iso(modified),
                "private": False,
                "gated": False,
                "disabled": False,
                "tags": [],
                "library_name": "gguf" if any(p.endswith(".gguf") for p in repo.entries) else None,
                "siblings": siblings,
                "usedStorage": sum(e.size for e in repo.entries.values()),
            }
        )

    async def refs(self, request: web.Request) -> web.Response:
        if (forwarded := await self._forwarded(request)) is not None:
            return forwarded
        repo, _ = await self._repo_at(request)
        branch = {"name": MAIN, "ref": f"refs/heads/{MAIN}", "targetCommit": repo.commit}
        return web.json_response({"branches": [branch], "converts": [], "tags": []})

    async def commits(self, request: web.Request) -> web.Response:
        if (forwarded := await self._forwarded(request)) is not None:
            return forwarded
        repo, _ = await self._repo_at(request)
        modified = max((e.mtime_ns for e in repo.entries.values()), default=0)
        # DIR has no history: its one commit is the state it is in.
        commit = {
            "id": repo.commit,
            "title": "Files as the mirror holds them",
            "message": "",
            "authors": [{"user": "lawchatd-mirror"}],
            "date": _iso(modified),
        }
        return web.json_response([commit])

    async def auth_check(self, request: web.Request) -> web.Response:
        await self._repo_at(request)  # 401 without the token, 404 for a repo it does not have
        return web.json_response({})

    async def paths_info(self, request: web.Request) -> web.Response:
        repo, _ = await self._repo_at(request)
        form = await request.post()
        folders = repo.folders()
        items: list[dict[str, Any]] = []
        for raw in form.getall("paths", []):
            if not isinstance(raw, str):
                continue
            path = raw.strip("/")
            if path in repo.entries:
                items.append(await self._tree_file(repo.entries[path]))
            elif path in folders:
                items.append({"type": "directory", "oid": _folder_oid(repo, path), "path": path})
        return web.json_response(items)

    async def tree(self, request: web.Request) -> web.Response:
        if (forwarded := await self._forwarded(request)) is not None:
            return forwarded
        repo, _ = await self._repo_at(request)
        try:
            base = (
                "/".join(segments(request.match_info["path"]))
                if "path" in request.match_info
                else ""
            )
        except BadPath:
            return error(400, None, "Invalid path")
        folders = repo.folders()
        if base and base not in folders:
            return error(404, "EntryNotFound", f"{base} does not exist on this revision")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        items: list[dict[str, Any]] = [
            {"type": "directory", "oid": _folder_oid(repo, f), "size": 0, "path": f}
            for f in sorted(folders)
            if _listed(f, base, recursive)
        ]
        for entry in repo.entries.values():
            if _listed(entry.relpath, base, recursive):
                items.append(await self._tree_file(entry))
        items.sort(key=lambda item: item["path"])
        return web.json_response(items)

    async def _sibling(self, entry: Entry) -> dict[str, Any]:
        item = await self._tree_file(entry)
        sibling: dict[str, Any] = {
            "rfilename": entry.relpath,
            "size": entry.size,
            "blobId": item["oid"],
        }
        if "lfs" in item:
            lfs = item["lfs"]
            sibling["lfs"] = {
                "sha256": lfs["oid"],
                "size": lfs["size"],
                "pointerSize": lfs["pointerSize"],
            }
        return sibling

    async def _tree_file(self, entry: Entry) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "size": entry.size, "path": entry.relpath}
        if not entry.lfs:
            return item | {"oid": await self.core.digests.blob_oid(entry)}
        sha = await self.core.digests.sha256(entry)
        # The git blob a Hub repo stores for an LFS file is this pointer; its sha1 is the oid.
        pointer = lfs_pointer(sha, entry.size)
        item["oid"] = git_blob_oid(pointer)
        item["lfs"] = {"oid": sha, "size": entry.size, "pointerSize": len(pointer)}
        return item


def _listed(path: str, base: str, recursive: bool) -> bool:
    prefix = f"{base}/" if base else ""
    if not path.startswith(prefix):
        return False
    return recursive or "/" not in path[len(prefix) :]


def _folder_oid(repo: Repo, folder: str) -> str:
    # Not git's tree hash, but stable for the same content, which is what clients compare.
    inside = sorted(p for p in repo.entries if p.startswith(folder + "/"))
    return hashlib.sha1(f"{repo.commit}:{folder}:{inside}".encode()).hexdigest()


def _iso(mtime_ns: int) -> str:
    when = datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
