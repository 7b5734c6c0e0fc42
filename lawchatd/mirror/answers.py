"""What pull-through answers, as data: which bytes to serve and from where, or why not.

files.py and api.py turn these into responses; pull.py builds them and knows nothing of the web.
"""

from __future__ import annotations

from dataclasses import dataclass

from lawchatd.mirror.inflight import Fetch
from lawchatd.mirror.repo import Entry


@dataclass(frozen=True)
class FileMeta:
    """What resolve reports about one file, from DIR or from the upstream."""

    commit: str
    sha256: str | None  # LFS files only
    size: int
    etag: str  # quoted; the sha256 for LFS, the git blob oid otherwise


@dataclass(frozen=True)
class InDir:
    """Bytes DIR holds: `entry`, described by `meta` (None: as DIR itself describes it)."""

    entry: Entry
    meta: FileMeta | None = None


@dataclass(frozen=True)
class ToCdn:
    """An LFS file: the client is sent to /cdn/ (where a fetch in flight is served too)."""

    meta: FileMeta
    relpath: str


@dataclass(frozen=True)
class Filling:
    """Bytes on their way from the upstream: served from the partial file as they arrive."""

    fetch: Fetch


@dataclass(frozen=True)
class Refusal:
    """The answer is an error: the upstream's refusal passed on, or its absence."""

    status: int
    code: str | None
    message: str
    reason: str | None = None  # the status line's phrase, where a client shows only that
    retry_after: int | None = None  # seconds, for a 503: the upstream may answer later
