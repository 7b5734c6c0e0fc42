"""The ONE place the mirror uses lawchatd's downloader (lawchatd.fetch.Download).

Also here: the HTTP session to the upstream and the downloader's store, so that the proxy/CA
session factory and the engine's store can be plugged in at this one place.

What it needs from the engine: a download of (repo, filename, revision, size, sha256) from an
endpoint with a token into a folder, parallel and resumable through a Store, that verifies the
sha256 and reports progress; and, to stream bytes to clients as they arrive, which byte ranges
are on disk (`Download.parts`: start, end, done) plus the partial file's path. Every LFS file
(one with a sha256) comes this way; the GGUF header is checked for *.gguf files only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from lawchatd import __version__
from lawchatd.downloads.catalog import ModelSpec
from lawchatd.downloads.download import Download
from lawchatd.hub.client import HubClient
from lawchatd.hub.session import client_session
from lawchatd.process.config import Settings
from lawchatd.state.store import Store


def upstream_session(options: FetchOptions, endpoint: str) -> aiohttp.ClientSession:
    """The session for everything the mirror asks of its upstream (metadata and bytes).

    The daemon's own: an office mirror honours HTTPS_PROXY/LAWCHATD_PROXY and
    LAWCHATD_CA_BUNDLE like `lawchatd serve` (read from the environment unless given).
    """
    network = options.network or Settings()
    settings = network.model_copy(
        update={"hf_endpoint": endpoint, "stall_timeout": options.stall_timeout}
    )
    session = client_session(settings)
    session.headers["User-Agent"] = f"lawchatd-mirror/{__version__}"
    return session


class FetchFailed(Exception):
    """The download ended without a verified file; the message is for people."""


@dataclass(frozen=True)
class FetchOptions:
    connections: int = 4
    max_retries: int = 10
    retry_backoff: float = 0.5
    stall_timeout: float = 30.0
    network: Settings | None = None  # proxy and CA settings; None: from the environment


class EngineFetch:
    """One file fetched by lawchatd's downloader into `staging/<repo>/models/<relpath>`."""

    def __init__(
        self,
        *,
        store: Store,
        session: aiohttp.ClientSession,
        endpoint: str,
        token: str | None,
        staging: Path,
        repo_id: str,
        relpath: str,
        commit: str,
        size: int,
        sha256: str,
        options: FetchOptions,
        on_change: Callable[[], None],
    ) -> None:
        settings = Settings.model_construct(
            data_dir=staging / repo_id,
            connections=options.connections,
            max_retries=options.max_retries,
            retry_backoff=options.retry_backoff,
            stall_timeout=options.stall_timeout,
        )
        spec = ModelSpec(
            f"{repo_id}/{relpath}", repo_id, relpath, size, sha256, revision=commit,
            gguf=relpath.endswith(".gguf"),
        )  # fmt: skip
        self._download = Download(
            spec,
            settings=settings,
            store=store,
            hub=HubClient(session, endpoint, token),
            on_change=lambda _d: on_change(),
        )

    @property
    def part_file(self) -> Path:
        return self._download.partial.path

    @property
    def verified_file(self) -> Path:
        return self._download.final_path

    def downloaded(self) -> int:
        return self._download.downloaded

    def available(self, offset: int) -> int:
        """The end of the bytes on disk that run without a gap from `offset`."""
        end = offset
        plan = self._download.plan
        for part in plan.parts if plan else []:  # the plan keeps them in file order
            if part.start <= end < part.start + part.done:
                end = part.start + part.done
        return end

    async def run(self) -> Path:
        await self._download.run()
        if self._download.published is None:
            row = self._download.row
            raise FetchFailed(row.error or f"the download ended {row.status}")
        return self.verified_file
