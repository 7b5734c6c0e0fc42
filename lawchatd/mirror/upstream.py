"""The upstream Hub as pull-through sees it: its session, and what a file is (one HEAD resolve,
parsed by HubClient.resolve like every download's)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from yarl import URL

from lawchatd import __version__
from lawchatd.errors import LawchatdError, in_words
from lawchatd.hub.client import HubClient, HubError, Resolved, TransientHubError
from lawchatd.hub.session import NetworkSettings, client_session

# Metadata calls must answer before the client's own timeout (huggingface_hub: 10 s), so that
# it gets the mirror's clear 502 rather than a timeout of its own.
METADATA_SECONDS = 8.0
METADATA_TIMEOUT = aiohttp.ClientTimeout(total=METADATA_SECONDS)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OID = re.compile(r"[0-9a-f]{40}")
_FORWARDED = (401, 403, 404, 429)  # refusals a client should see as they are; the rest is a 502


class UpstreamError(LawchatdError):
    """The upstream's refusal (forwarded with its status and X-Error-Code) or its absence."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message, status=status)
        self.code = code


@dataclass(frozen=True)
class UpstreamFile:
    repo_id: str
    relpath: str
    commit: str
    size: int
    sha256: str | None  # LFS files: X-Linked-Etag
    blob_oid: str | None  # small files: the ETag, a git blob id


@dataclass(frozen=True)
class UpstreamNetwork:
    """The session's settings (hub.session.NetworkSettings) for the upstream: its endpoint,
    the stall timeout, and the proxy and CA files of the network given (none: the system's)."""

    hf_endpoint: str
    stall_timeout: float
    proxy: SecretStr | None = None
    ssl_cert_file: Path | None = None
    ca_bundle: Path | None = None

    @classmethod
    def of(
        cls, endpoint: str, stall_timeout: float, network: NetworkSettings | None
    ) -> UpstreamNetwork:
        if network is None:
            return cls(endpoint, stall_timeout)
        return cls(endpoint, stall_timeout, network.proxy, network.ssl_cert_file, network.ca_bundle)


def upstream_session(network: UpstreamNetwork) -> aiohttp.ClientSession:
    """The daemon's own session, for everything the mirror asks of its upstream: an office
    mirror goes through the proxy and trusts the CA files that `lawchatd serve` would."""
    session = client_session(network)
    session.headers["User-Agent"] = f"lawchatd-mirror/{__version__}"
    return session


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, endpoint: str, token: str | None) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self.hub = HubClient(session, self.endpoint, token)

    def endpoint_url(self, path: URL) -> URL:
        """The same path and query on the upstream."""
        return URL(self.endpoint + str(path), encoded=True)

    def headers(self, url: URL) -> dict[str, str]:
        # The token is for the upstream Hub only, never for a CDN it redirects to; the
        # session carries the User-Agent.
        return {**self.hub.headers_for(url), "Accept-Encoding": "identity"}

    async def head(self, repo_id: str, revision: str, relpath: str) -> UpstreamFile:
        try:
            async with asyncio.timeout(METADATA_SECONDS):
                resolved = await self.hub.resolve(repo_id, revision, relpath, follow_local=True)
        except HubError as exc:
            status = exc.status if exc.status in _FORWARDED else 502
            raise UpstreamError(status, exc.code, exc.hub_message or str(exc)) from exc
        except TransientHubError as exc:
            status = 429 if exc.status == 429 else 502
            raise UpstreamError(status, None, f"the upstream {self.endpoint}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = in_words(exc)  # proxy/TLS/DNS in words; no presigned signature
            raise UpstreamError(
                502, None, f"the upstream {self.endpoint} is unreachable: {reason}"
            ) from exc
        return _file(repo_id, relpath, resolved)


def _file(repo_id: str, relpath: str, resolved: Resolved) -> UpstreamFile:
    commit, sha = resolved.commit or "", resolved.sha256
    if not _OID.fullmatch(commit) or resolved.size is None:
        raise UpstreamError(502, None, "the upstream did not answer like the Hub (no commit/size)")
    if sha:
        if not _SHA256.fullmatch(sha):
            raise UpstreamError(502, None, "the upstream gave a malformed X-Linked-Etag")
        return UpstreamFile(repo_id, relpath, commit, resolved.size, sha, None)
    oid = resolved.etag or ""
    return UpstreamFile(
        repo_id, relpath, commit, resolved.size, None, oid if _OID.fullmatch(oid) else None
    )
