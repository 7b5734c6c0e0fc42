"""Asking the upstream Hub what a file is (HEAD resolve), for the pull-through mirror."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from lawchatd.fetch.errors import describe
from lawchatd.hub.client import HubClient, strip_etag

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Metadata calls must answer before the client's own timeout (huggingface_hub: 10 s), so that
# it gets the mirror's clear 502 rather than a timeout of its own.
METADATA_TIMEOUT = aiohttp.ClientTimeout(total=8)
_OID = re.compile(r"[0-9a-f]{40}")


class UpstreamError(Exception):
    """The upstream's refusal (forwarded with its status and X-Error-Code) or its absence."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class UpstreamFile:
    repo_id: str
    relpath: str
    commit: str
    size: int
    sha256: str | None  # LFS files: X-Linked-Etag
    blob_oid: str | None  # small files: the ETag, a git blob id


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, endpoint: str, token: str | None) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self._hub = HubClient(session, self.endpoint, token)  # URLs, and the token's origin

    def endpoint_url(self, path: URL) -> URL:
        """The same path and query on the upstream."""
        return URL(self.endpoint + str(path), encoded=True)

    def resolve_url(self, repo_id: str, revision: str, relpath: str) -> URL:
        return self._hub.url_for(repo_id, revision, relpath)

    def headers(self, url: URL) -> dict[str, str]:
        # The token is for the upstream Hub only, never for a CDN it redirects to; the
        # session carries the User-Agent.
        return {**self._hub.headers_for(url), "Accept-Encoding": "identity"}

    async def head(self, repo_id: str, revision: str, relpath: str) -> UpstreamFile:
        url = self.resolve_url(repo_id, revision, relpath)
        try:
            headers = await self._head(url)
            location = headers.get("Location")
            if not headers.get("X-Linked-Etag") and location:
                # A small file behind a same-host redirect (the Hub's /api/resolve-cache/...).
                target = url.join(URL(location, encoded=True))
                if target.origin() == url.origin():
                    commit = headers.get("X-Repo-Commit")
                    headers = await self._head(target)
                    if commit and "X-Repo-Commit" not in headers:
                        headers["X-Repo-Commit"] = commit
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = describe(exc)  # proxy/TLS/DNS in words; no presigned signature
            raise UpstreamError(
                502, None, f"the upstream {self.endpoint} is unreachable: {reason}"
            ) from exc
        return self._file(repo_id, relpath, headers)

    async def _head(self, url: URL) -> CIMultiDict[str]:
        async with self.session.head(
            url, headers=self.headers(url), allow_redirects=False, timeout=METADATA_TIMEOUT
        ) as resp:
            self._check(resp)
            return CIMultiDict(resp.headers)

    def _check(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        code = resp.headers.get("X-Error-Code")
        message = resp.headers.get("X-Error-Message") or f"the upstream answered {resp.status}"
        status = resp.status if resp.status in (401, 403, 404, 429) else 502
        raise UpstreamError(status, code, message)

    def _file(self, repo_id: str, relpath: str, headers: CIMultiDict[str]) -> UpstreamFile:
        commit = headers.get("X-Repo-Commit", "")
        sha = strip_etag(headers.get("X-Linked-Etag"))
        size = headers.get("X-Linked-Size") or headers.get("Content-Length") or ""
        if not _OID.fullmatch(commit) or not size.isdecimal():
            raise UpstreamError(
                502, None, "the upstream did not answer like the Hub (no commit/size)"
            )
        if sha:
            if not _SHA256.fullmatch(sha):
                raise UpstreamError(502, None, "the upstream gave a malformed X-Linked-Etag")
            return UpstreamFile(repo_id, relpath, commit, int(size), sha, None)
        oid = strip_etag(headers.get("ETag")) or ""
        return UpstreamFile(
            repo_id, relpath, commit, int(size), None, oid if _OID.fullmatch(oid) else None
        )
