"""Talking to the Hub: resolve a file's metadata, then fetch byte ranges from wherever it lives."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from lawchatd.errors import LawchatdError, TransientError


class HubError(LawchatdError):
    """An upstream answer that retrying will not change; the message is for users.

    `status` and `code` are the Hub's own (HTTP status, X-Error-Code) when it answered (502
    and no code when it did not), and `hub_message` its X-Error-Message: what a mirror
    forwards to its clients."""

    status = 502
    code = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        hub_message: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.hub_message = hub_message


class TransientHubError(TransientError):
    """An upstream hiccup (5xx, 429) worth retrying; `wait` overrides the backoff
    (Retry-After), `note` is shown in the progress while waiting."""

    code = "upstream_unavailable"

    def __init__(
        self,
        message: str,
        *,
        wait: float | None = None,
        note: str | None = None,
        status: int | None = None,
    ):
        super().__init__(message, status=status)  # the server's 5xx or 429 (503 if unknown)
        self.wait = wait
        self.note = note


def is_transient(status: int) -> bool:
    """Statuses worth a retry after a backoff, from the Hub and the CDN alike."""
    return status == 429 or status >= 500


def transient(who: str, resp: aiohttp.ClientResponse) -> TransientHubError:
    """The error for a transient status, with the wait the server asked for."""
    wait = retry_after(resp.headers)
    note = None
    if resp.status == 429:
        note = "rate limited by the Hub" + (f", retrying in {wait:g} s" if wait else "")
    return TransientHubError(
        f"{who} answered {resp.status} {resp.reason}", wait=wait, note=note, status=resp.status
    )


_RATELIMIT_T = re.compile(r"\bt=(\d+)")


def retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """Seconds the server asks us to wait: Retry-After (seconds or a date) or RateLimit t=."""
    waits = []
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        waits.append(float(value))
    elif value:
        with contextlib.suppress(TypeError, ValueError):
            waits.append(max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
    if match := _RATELIMIT_T.search(headers.get("RateLimit", "")):
        waits.append(float(match[1]))
    return max(waits) if waits else None


@dataclass(frozen=True)
class Resolved:
    """The Hub's answer to a resolve (HEAD), parsed once for every user of it."""

    commit: str | None  # X-Repo-Commit
    sha256: str | None  # X-Linked-Etag: LFS files only
    size: int | None  # X-Linked-Size, else the length of a file the Hub serves itself
    url: URL  # where the bytes are (the CDN, or the Hub itself for small files)
    etag: str | None = None  # the ETag: for a small file, its git blob id


def strip_etag(value: str | None) -> str | None:
    """An ETag's value without `W/` and quotes (the Hub's X-Linked-Etag is the sha256)."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


class HubClient:
    def __init__(self, session: aiohttp.ClientSession, endpoint: str, token: str | None) -> None:
        self._session = session
        self._endpoint = URL(endpoint)
        self._token = token

    def url_for(self, repo: str, revision: str, filename: str) -> URL:
        """`{endpoint}/{repo}/resolve/{revision}/{filename}`, quoted as the Hub expects."""
        path = f"{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"
        return URL(f"{str(self._endpoint).rstrip('/')}/{path}", encoded=True)

    def headers_for(self, url: URL) -> dict[str, str]:
        # The token is for the Hub only: a CDN behind a redirect gets a presigned URL instead.
        if self._token and url.origin() == self._endpoint.origin():
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    async def resolve(
        self,
        repo: str,
        revision: str,
        filename: str,
        *,
        follow_local: bool = False,
    ) -> Resolved:
        """HEAD the file's resolve URL without following a redirect to the CDN.

        `follow_local`: a small file behind a redirect on the Hub's own host (its
        /api/resolve-cache/...) is asked again there, for its own length and ETag.
        A caller with a deadline wraps the call in `asyncio.timeout`.
        """
        url = self.url_for(repo, revision, filename)
        status, headers = await self._head(url, repo, revision, filename)
        target = url
        if 300 <= status < 400:
            location = headers.get("Location")
            if not location:
                raise HubError(f"the Hub redirected {filename} without a Location", status=502)
            target = url.join(URL(location, encoded=True))
            if target.scheme not in ("http", "https") or not target.host:
                raise HubError(
                    f"the Hub redirected {filename} to {target.scheme or 'a relative'}: "
                    "address, not a web address lawchatd may follow",
                    status=502,
                )
            if follow_local and "X-Linked-Etag" not in headers and target.origin() == url.origin():
                commit = headers.get("X-Repo-Commit")
                status, headers = await self._head(target, repo, revision, filename)
                if commit and "X-Repo-Commit" not in headers:
                    headers["X-Repo-Commit"] = commit
        size = headers.get("X-Linked-Size")
        if size is None and status == 200:  # a redirect's length is its own body's
            size = headers.get("Content-Length")
        return Resolved(
            commit=headers.get("X-Repo-Commit"),
            sha256=strip_etag(headers.get("X-Linked-Etag")),
            size=int(size) if size and size.isdigit() else None,
            url=target,
            etag=strip_etag(headers.get("ETag")),
        )

    async def _head(
        self, url: URL, repo: str, revision: str, filename: str
    ) -> tuple[int, CIMultiDict[str]]:
        async with self._session.head(
            url, headers=self.headers_for(url), allow_redirects=False
        ) as resp:
            self._raise_for_status(resp, repo, revision, filename)
            return resp.status, CIMultiDict(resp.headers)

    def _raise_for_status(
        self, resp: aiohttp.ClientResponse, repo: str, rev: str, filename: str
    ) -> None:
        if resp.status < 400:
            return
        code = resp.headers.get("X-Error-Code", "")
        told: dict[str, Any] = {
            "status": resp.status, "code": code or None,
            "hub_message": resp.headers.get("X-Error-Message"),
        }  # fmt: skip
        where = f"{repo}/{filename}"
        if resp.status in (401, 403):
            if code == "GatedRepo" or self._token:
                raise HubError(
                    f"access to {repo} is restricted (gated model): accept its licence on the "
                    "Hub with your account, and set LAWCHATD_HF_TOKEN to a token that may read it",
                    **told,
                )
            raise HubError(
                f"the Hub refused access to {where}; set LAWCHATD_HF_TOKEN to a token that may "
                "read it",
                **told,
            )
        if resp.status == 404:
            if code == "RepoNotFound":
                raise HubError(f"the repository {repo} does not exist on the Hub", **told)
            if code == "RevisionNotFound":
                raise HubError(f"the revision {rev!r} does not exist in {repo}", **told)
            raise HubError(f"the file {filename} was not found in {repo} at {rev!r}", **told)
        if is_transient(resp.status):
            raise transient("the Hub", resp)
        raise HubError(f"the Hub answered {resp.status} {resp.reason} for {where}", **told)

    def get_range(
        self,
        url: URL,
        start: int,
        end: int | None,
        if_range: str | None,
        *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.client._RequestContextManager:
        """GET bytes [start, end) (to the end of file when `end` is None).

        `Accept-Encoding: identity`: a CDN that may compress ignores `Range` and sends the
        whole object (CloudFront; huggingface_hub PR #3778), and offsets must be raw bytes.
        """
        headers = {**self.headers_for(url), "Accept-Encoding": "identity"}
        if start > 0 or end is not None:
            last = "" if end is None else str(end - 1)
            headers["Range"] = f"bytes={start}-{last}"
            if if_range:
                headers["If-Range"] = if_range
        extra = {} if timeout is None else {"timeout": timeout}
        return self._session.get(url, headers=headers, allow_redirects=True, **extra)
