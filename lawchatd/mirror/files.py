"""`resolve` and `/cdn/`: a file's metadata the way the Hub gives it, then its bytes.

LFS files: resolve answers 302 with X-Repo-Commit, X-Linked-Etag (the sha256) and X-Linked-Size,
pointing at /cdn/<org>/<repo>/<sha256>/<file> (presigned when the mirror has a token). The /cdn/
response repeats those headers: huggingface_hub 2.x follows a redirect that stays on the same host
and reads them from the last response (huggingface_hub utils/_http.py,
_httpx2_follow_hub_redirects_with_backoff). Small files are answered directly, ETag = git blob oid.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

from aiohttp import web

from lawchatd.mirror.answers import FileMeta, Filling, InDir, Refusal, ToCdn
from lawchatd.mirror.body import FileSource, Source, send_body
from lawchatd.mirror.core import Core, Refused, error, refusal
from lawchatd.mirror.inflight import FillingSource
from lawchatd.mirror.paths import BadPath, open_inside, segments
from lawchatd.mirror.ranges import Unsatisfiable, cdn_etag, parse_range
from lawchatd.mirror.repo import Entry, Repo

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


class Files:
    def __init__(self, core: Core) -> None:
        self.core = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/cdn/{org}/{repo}/{sha256:[0-9a-f]{64}}/{filename:.+}", self.cdn),
            web.get("/{org}/{repo}/resolve/{revision}/{filename:.+}", self.resolve),
        ]

    @staticmethod
    def relpath(request: web.Request) -> str:
        try:
            return "/".join(segments(request.match_info["filename"]))
        except BadPath:
            raise Refused(400, None, "Invalid path") from None

    # ---- resolve ------------------------------------------------------------------------

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        core = self.core
        core.require_token(request)
        org, name = core.repo_id(request)
        relpath, revision = self.relpath(request), request.match_info["revision"]
        repo = await core.index.get(org, name, relpath)
        if core.pull is not None and core.pull.allows(org, name):
            answer = await core.pull.resolve(org, name, revision, relpath)
            if not _only_in_dir(answer, repo):
                if isinstance(answer, Refusal):
                    return refusal(answer)
                if isinstance(answer, ToCdn):
                    return self.redirect(request, answer.meta, answer.relpath)
                assert answer.meta is not None
                return await self.serve_entry(request, answer.meta, answer.entry)
        if repo is None:
            return error(404, "RepoNotFound", "Repository not found")
        await core.check_revision(repo, revision)
        entry = repo.entries.get(relpath)
        if entry is None:
            return error(404, "EntryNotFound", "Entry not found")
        return await self.answer_local(request, repo, entry)

    async def answer_local(
        self, request: web.Request, repo: Repo, entry: Entry
    ) -> web.StreamResponse:
        commit = await self.core.commit_of(repo)
        if entry.lfs:
            sha = await self.core.digests.sha256(entry)
            meta = FileMeta(commit, sha, entry.size, f'"{sha}"')
            return self.redirect(request, meta, entry.relpath)
        oid = await self.core.digests.blob_oid(entry)
        meta = FileMeta(commit, None, entry.size, f'"{oid}"')
        return await self.serve_entry(request, meta, entry)

    def redirect(self, request: web.Request, meta: FileMeta, relpath: str) -> web.Response:
        assert meta.sha256 is not None
        org, name = request.match_info["org"], request.match_info["repo"]
        path = f"/cdn/{org}/{name}/{meta.sha256}/{relpath}"
        query = f"commit={meta.commit}"
        if self.core.signer is not None:
            query += "&" + self.core.signer.query(path)
        base = self.core.cdn_base or str(request.url.origin())
        headers = {
            "Location": f"{base}{quote(path)}?{query}",
            **_hub_headers(meta),
            "Content-Length": "0",
        }
        return web.Response(status=302, headers=headers)

    # ---- cdn ----------------------------------------------------------------------------

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        core = self.core
        org, name = core.repo_id(request)
        relpath, sha = self.relpath(request), request.match_info["sha256"]
        signed = core.signer is not None and core.signer.valid(request.path, request.query)
        if core.token is not None and not signed and not core.authorized(request):
            # What the Hub's CDN says to an expired or forged presigned URL: resolve again.
            return error(403, None, "Request has expired or is not signed; resolve the file again")
        repo = await core.index.get(org, name, relpath)
        entry = repo.entries.get(relpath) if repo else None
        given = request.query.get("commit", "")
        if entry is not None and await core.digests.sha256(entry) == sha:
            assert repo is not None
            commit = given if _COMMIT_RE.fullmatch(given) else await core.commit_of(repo)
            meta = FileMeta(commit, sha, entry.size, f'"{sha}"')
            return await self.serve_entry(request, meta, entry, cdn=True)
        if core.pull is not None and core.pull.allows(org, name):
            found = await core.pull.source(org, name, relpath, sha)
            commit = given if _COMMIT_RE.fullmatch(given) else "0" * 40
            if isinstance(found, Refusal):
                return refusal(found)
            if isinstance(found, InDir):
                meta = FileMeta(commit, sha, found.entry.size, f'"{sha}"')
                return await self.serve_entry(request, meta, found.entry, cdn=True)
            if isinstance(found, Filling):
                return await self.serve_filling(
                    request, FileMeta(commit, sha, 0, f'"{sha}"'), found
                )
        return error(404, None, "This file changed since it was resolved")

    async def serve_filling(
        self, request: web.Request, meta: FileMeta, found: Filling
    ) -> web.StreamResponse:
        """Bytes on their way; a client that would wait longer than the mirror's client wait
        for the first of them hears a 503 that says why, not silence until its timeout."""
        pull, fetch = self.core.pull, found.fetch
        assert pull is not None
        size = fetch.file.size
        meta = FileMeta(meta.commit, meta.sha256, size, meta.etag)
        try:
            span = parse_range(request.headers.get("Range"), size)
        except Unsatisfiable:
            span = None
        start = span[0] if span else 0
        if request.method == "GET" and size and not await fetch.ready(start, pull.client_wait):
            why = fetch.waiting or f"the upstream sent nothing for {pull.client_wait:g} s"
            return refusal(pull.unavailable(fetch.file.relpath, why))
        if fetch.failed is not None and fetch.available(start) <= start:
            message = f"fetching {fetch.file.relpath} from the upstream failed: {fetch.failed}"
            return error(502, None, message, reason=f"Bad Gateway: {message}"[:200])
        source = FillingSource(fetch, pull.client_wait)
        return await self.serve(request, meta, source, size, cdn=True)

    async def serve_entry(
        self, request: web.Request, meta: FileMeta, entry: Entry, *, cdn: bool = False
    ) -> web.StreamResponse:
        return await self.serve(request, meta, await self.open_local(entry), entry.size, cdn=cdn)

    async def open_local(self, entry: Entry) -> FileSource:
        try:
            return FileSource(await asyncio.to_thread(open_inside, self.core.root, entry.path))
        except OSError:
            raise Refused(404, "EntryNotFound", "Entry not found") from None

    # ---- bytes --------------------------------------------------------------------------

    async def serve(
        self,
        request: web.Request,
        meta: FileMeta,
        source: Source,
        size: int,
        *,
        cdn: bool = False,
    ) -> web.StreamResponse:
        """Send `source` (closing it) honouring Range and, against the ETag sent, If-Range."""
        try:
            return await _serve(request, meta, source, size, cdn)
        finally:
            source.close()


def _hub_headers(meta: FileMeta) -> dict[str, str]:
    headers = {"X-Repo-Commit": meta.commit, "ETag": meta.etag}
    if meta.sha256 is not None:
        headers |= {"X-Linked-Etag": meta.etag, "X-Linked-Size": str(meta.size)}
    return headers


async def _serve(
    request: web.Request, meta: FileMeta, source: Source, size: int, cdn: bool
) -> web.StreamResponse:
    headers = _hub_headers(meta) | {"Accept-Ranges": "bytes"}
    if cdn:
        assert meta.sha256 is not None
        headers["ETag"] = cdn_etag(meta.sha256, size)
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != headers["ETag"]:
        range_header = None
    try:
        span = parse_range(range_header, size)
    except Unsatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)
    start, end = span or (0, size - 1)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    resp = web.StreamResponse(status=206 if span else 200, headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = end - start + 1
    await resp.prepare(request)
    if request.method == "GET" and end >= start:
        await send_body(request, resp, source, start, end - start + 1)
    return resp


def _only_in_dir(answer: InDir | ToCdn | Refusal, repo: Repo | None) -> bool:
    """A repo the upstream does not have, copied into DIR by hand: DIR answers for it."""
    return isinstance(answer, Refusal) and answer.code == "RepoNotFound" and repo is not None
