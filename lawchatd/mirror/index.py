"""Each repo's scan, kept while its folders (and the file asked for) are unchanged.

A daemon downloading through the mirror sends a /cdn/ request per part and per retry; walking
the repo for each would cost a stat per file every time. A file added, removed or renamed
into place (how pull-through publishes) changes its folder's mtime; a file rewritten in
place does not, so the one a request names is checked by its own stat and its sidecar's.
Listings (model_info, tree) scan afresh: they read every file anyway.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lawchatd.mirror.paths import SIDECAR
from lawchatd.mirror.repo import Repo, stamp

# An mtime is the file system's coarse clock: a folder changed this close to a scan may change
# again within the same tick, unseen; such a scan is not kept (git's "racily clean" rule).
RACY_NS = 50_000_000


class RepoIndex:
    """Bounded by the repo folders in DIR: one scan kept per folder."""

    def __init__(self, root: Path) -> None:
        self.root = root  # real path of DIR
        self._scans: dict[Path, Repo] = {}

    async def scan(self, org: str, name: str) -> Repo | None:
        """A fresh scan of the repo (and kept for the requests that follow)."""
        return await asyncio.to_thread(self._rescan, self.root / org / name)

    async def get(self, org: str, name: str, relpath: str) -> Repo | None:
        """The repo, its scan trusted for `relpath` and for the repo's file list."""
        return await asyncio.to_thread(self._get, self.root / org / name, relpath)

    def _get(self, repo_dir: Path, relpath: str) -> Repo | None:
        kept = self._scans.get(repo_dir)
        if kept is not None and _holds(kept, repo_dir, relpath):
            return kept
        return self._rescan(repo_dir)

    def _rescan(self, repo_dir: Path) -> Repo | None:
        repo = Repo.scan(self.root, repo_dir)
        if repo is None:
            self._scans.pop(repo_dir, None)
        else:
            self._scans[repo_dir] = repo
        return repo


def _holds(repo: Repo, repo_dir: Path, relpath: str) -> bool:
    """Blocking: whether nothing the scan saw of the repo, or of `relpath`, changed since."""
    watched = dict(repo.watched)
    if (entry := repo.entries.get(relpath)) is not None:
        # Rewritten in place, a file changes no folder: the one asked for is looked at itself.
        watched[entry.path] = (entry.size, entry.mtime_ns)
        watched[repo_dir / f"{relpath}{SIDECAR}"] = entry.sidecar
    # A file asked for that is not in the scan would have changed its folder's mtime.
    return all(
        stamp(path) == seen and (seen is None or seen[1] < repo.scanned_ns - RACY_NS)
        for path, seen in watched.items()
    )
