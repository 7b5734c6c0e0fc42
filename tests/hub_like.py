"""A small upstream that answers the way huggingface.co does in 2025-2026, for pull-through tests.

From design/upstream-facts.md ("The Hub as it answers in 2025-2026"): LFS files answer 302 to a
CDN on another host (presigned, with X-Xet-Hash and a xet-auth Link beside the usual headers);
small files answer 307 to a relative /api/resolve-cache/... URL; the CDN refuses a request that
carries an Authorization header on top of its signature (as S3 does).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

COMMIT = "c0ffee" + "0" * 34


@dataclass
class HubLike:
    root: Path  # root/<file>, one repo
    repo: str
    port: int
    cdn_authorizations: list[str] = field(default_factory=list)
    resolves: list[tuple[str, bool]] = field(default_factory=list)  # (path, had a token)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", f"/{self.repo}/resolve/{{rev}}/{{name}}", self.resolve)
        app.router.add_route("*", "/api/resolve-cache/models/{org}/{r}/{commit}/{name}", self.cache)
        app.router.add_get("/cas/{sha}", self.cdn)
        app.router.add_get(f"/api/models/{self.repo}", self.info)
        app.router.add_get(f"/api/models/{self.repo}/revision/{{rev}}", self.info)
        return app

    async def resolve(self, request: web.Request) -> web.Response:
        self.resolves.append((request.path, "Authorization" in request.headers))
        name = request.match_info["name"]
        path = self.root / name
        if request.match_info["rev"] not in ("main", COMMIT):
            return web.json_response({}, status=404, headers={"X-Error-Code": "RevisionNotFound"})
        if not path.is_file():
            return web.json_response({}, status=404, headers={"X-Error-Code": "EntryNotFound"})
        data = path.read_bytes()
        if not name.endswith(".gguf"):
            cache = f"/api/resolve-cache/models/{self.repo}/{COMMIT}/{name}"
            return web.Response(status=307, headers={"Location": cache, "X-Repo-Commit": COMMIT})
        sha = hashlib.sha256(data).hexdigest()
        headers = {
            "Location": f"http://localhost:{self.port}/cas/{sha}?X-Amz-Expires=3600&X-Amz-Signature=ab",
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{sha}"',
            "X-Xet-Hash": hashlib.sha256(b"xet" + data).hexdigest(),  # NOT the sha256
            "Link": f'<http://127.0.0.1:{self.port}/api/models/{self.repo}/xet-read-token/{COMMIT}>; rel="xet-auth"',
        }
        return web.Response(status=302, headers=headers)

    async def cache(self, request: web.Request) -> web.StreamResponse:
        data = (self.root / request.match_info["name"]).read_bytes()
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{oid}"'}
        return web.Response(body=data, headers=headers)

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            self.cdn_authorizations.append(request.headers["Authorization"])
            return web.Response(status=400, text="Only one auth mechanism allowed")
        for path in self.root.iterdir():
            if hashlib.sha256(path.read_bytes()).hexdigest() == request.match_info["sha"]:
                return web.FileResponse(path)  # ranges and If-Range, with its own ETag
        return web.Response(status=404)

    async def info(self, request: web.Request) -> web.Response:
        if request.match_info.get("rev", "main") not in ("main", COMMIT):
            return web.json_response({}, status=404, headers={"X-Error-Code": "RevisionNotFound"})
        blobs = request.query.get("blobs") == "true"
        siblings = [
            _sibling(p) if blobs else {"rfilename": p.name} for p in sorted(self.root.iterdir())
        ]
        return web.json_response({"id": self.repo, "sha": COMMIT, "siblings": siblings})


def _sibling(path: Path) -> dict:
    """As huggingface.co lists a file with ?blobs=true: size, blobId, and lfs for LFS files."""
    data = path.read_bytes()
    if not path.name.endswith(".gguf"):
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return {"rfilename": path.name, "size": len(data), "blobId": blob}
    sha = hashlib.sha256(data).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
    blob = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer.encode()).hexdigest()
    lfs = {"sha256": sha, "size": len(data), "pointerSize": len(pointer)}
    return {"rfilename": path.name, "size": len(data), "blobId": blob, "lfs": lfs}
