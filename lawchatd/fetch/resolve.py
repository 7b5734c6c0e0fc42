"""Where the file is: the Hub's answer checked against the FileRef before any byte is fetched."""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from lawchatd.errors import in_words
from lawchatd.fetch.errors import DownloadFailed, Transient
from lawchatd.fetch.fetcher import Link
from lawchatd.fetch.ref import FileRef
from lawchatd.hub.client import HubError, Resolved


async def resolve_within(link: Link, ref: FileRef, deadline: float) -> Resolved:
    """`resolve_into` within `deadline` seconds (the stall timeout): a Hub that trickles its
    head a byte a second used to keep a download `resolving` for minutes; now that is retried
    like a stalled part. A certificate that cannot be verified is no hiccup: no retry fixes
    it, so the download ends at once, saying what to set (LAWCHATD_CA_BUNDLE)."""
    try:
        async with asyncio.timeout(deadline):
            return await resolve_into(link, ref)
    except aiohttp.ClientConnectorCertificateError as exc:
        raise DownloadFailed(in_words(exc)) from None
    except TimeoutError:
        raise Transient(f"the Hub did not answer within {deadline:g} s") from None


async def resolve_into(link: Link, ref: FileRef) -> Resolved:
    """Resolve `ref` and point `link` at its bytes; DownloadFailed if upstream differs."""
    if ref.url is not None:  # a plain URL: nothing to ask, the checks at the end guard
        link.url = URL(ref.url)
        return Resolved(commit=None, sha256=None, size=None, url=link.url)
    assert ref.repo is not None and ref.path is not None
    hub = link.hub
    try:
        resolved = await hub.resolve(ref.repo, ref.revision, ref.path)
    except HubError as exc:
        raise DownloadFailed(str(exc)) from exc
    if ref.sha256 and resolved.sha256 and resolved.sha256 != ref.sha256:
        raise DownloadFailed(
            f"the upstream file changed: the Hub reports sha256 {resolved.sha256} for "
            f"{ref.name}, the {ref.expected_by} expects {ref.sha256}; nothing was downloaded"
        )
    if resolved.size is not None and resolved.size != ref.size:
        raise DownloadFailed(
            f"the upstream file changed: the Hub reports {resolved.size} bytes for "
            f"{ref.name}, the {ref.expected_by} expects {ref.size}"
        )
    link.url = resolved.url
    if resolved.url == hub.url_for(ref.repo, ref.revision, ref.path) and resolved.commit:
        # Served by the Hub itself: pin the commit so a push cannot splice two versions.
        link.url = hub.url_for(ref.repo, resolved.commit, ref.path)
    return resolved
