"""The ONE place the mirror uses lawchatd's download engine (lawchatd.fetch.FileFetch).

Every file comes this way, LFS or small: parallel byte ranges, resumable (the parts are kept
in a journal beside the `.part`, so a fetch cut by an outage or a restart goes on where it
stopped), the sha256 checked as the bytes arrive, the GGUF header for *.gguf files only. A
small file has no sha256 on the Hub: its git blob id is checked here, before DIR sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from lawchatd.errors import LawchatdError, in_words
from lawchatd.fetch import DownloadFailed, FetchOptions, FileFetch, FileJournal, FileRef, part_path
from lawchatd.hub.client import HubClient
from lawchatd.mirror.digests import blob_oid_file
from lawchatd.mirror.upstream import UpstreamFile

log = logging.getLogger(__name__)


class FetchFailed(LawchatdError):
    """The fetch ended without a verified file; the message is for people."""


class EngineFetch:
    """One file fetched by the engine into `staging/<repo>/<relpath>` (hidden from clients)."""

    def __init__(
        self,
        *,
        hub: HubClient,
        file: UpstreamFile,
        staging: Path,
        options: FetchOptions,
        on_change: Callable[[], None],
    ) -> None:
        self._file = file
        self.verified_file = staging / file.repo_id / file.relpath
        ref = FileRef(
            size=file.size, sha256=file.sha256, repo=file.repo_id, path=file.relpath,
            revision=file.commit, gguf=file.relpath.endswith(".gguf"), expected_by="upstream",
        )  # fmt: skip
        self._journal = FileJournal(
            self.verified_file.with_name(self.verified_file.name + ".part.json")
        )
        self._fetch = FileFetch(
            ref, self.verified_file, hub=hub, journal=self._journal, options=options,
            on_progress=lambda _progress: on_change(), name=f"{file.repo_id}/{file.relpath}",
        )  # fmt: skip

    @property
    def part_file(self) -> Path:
        return part_path(self.verified_file)

    def downloaded(self) -> int:
        return self._fetch.done

    def available(self, offset: int) -> int:
        """The end of the bytes on disk that run without a gap from `offset`."""
        return self._fetch.available(offset)

    async def run(self) -> Path:
        try:
            fetched = await self._fetch.run()
        except DownloadFailed as exc:
            raise FetchFailed(str(exc)) from exc
        except (asyncio.CancelledError, FetchFailed):
            raise
        except Exception as exc:  # a bug: the clients must hear a failure, never read the holes
            log.exception("mirror fetch of %s failed", self.verified_file.name)
            raise FetchFailed(in_words(exc, unexpected=True)) from exc
        await asyncio.to_thread(self._journal.forget)
        if self._file.blob_oid is not None:
            problem = await asyncio.to_thread(_check_blob, fetched.path, self._file)
            if problem:
                raise FetchFailed(problem)
        return fetched.path


def _check_blob(path: Path, file: UpstreamFile) -> str | None:
    if blob_oid_file(path) == file.blob_oid:
        return None
    path.unlink(missing_ok=True)
    return f"git blob id mismatch for {file.relpath}: the bytes were deleted"
