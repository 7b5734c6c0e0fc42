"""Where the file is: the Hub's answer checked against the catalog before any byte is fetched."""

from __future__ import annotations

from lawchatd.downloads.catalog import ModelSpec
from lawchatd.fetch.errors import DownloadFailed
from lawchatd.fetch.fetcher import Link
from lawchatd.hub.client import HubError, Resolved


async def resolve_into(link: Link, spec: ModelSpec) -> Resolved:
    """Resolve `spec` and point `link` at its bytes; DownloadFailed if upstream differs."""
    hub = link.hub
    try:
        resolved = await hub.resolve(spec, spec.revision)
    except HubError as exc:
        raise DownloadFailed(str(exc)) from exc
    if spec.sha256 and resolved.sha256 and resolved.sha256 != spec.sha256:
        raise DownloadFailed(
            f"the upstream file changed: the Hub reports sha256 {resolved.sha256} for "
            f"{spec.filename}, the catalog expects {spec.sha256}; nothing was downloaded"
        )
    if resolved.size is not None and resolved.size != spec.size:
        raise DownloadFailed(
            f"the upstream file changed: the Hub reports {resolved.size} bytes for "
            f"{spec.filename}, the catalog expects {spec.size}"
        )
    link.url = resolved.url
    if resolved.url == hub.resolve_url(spec, spec.revision) and resolved.commit:
        # Served by the Hub itself: pin the commit so a push cannot splice two versions.
        link.url = hub.resolve_url(spec, resolved.commit)
    return resolved
