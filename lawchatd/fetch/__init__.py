"""lawchatd.fetch: the download engine as a library, knowing nothing of the daemon.

Takes: a `FileRef` (a Hub repo/revision/path or a plain URL; the expected size, and sha256 when
known; whether the bytes must start with a GGUF header), a `HubClient` over an aiohttp session,
the destination path (the bytes gather in `<dest>.part` beside it), `FetchOptions` (one frozen
dataclass, one set of defaults), and optionally a `Journal` (where the parts are kept so that a
cancel, a restart or a kill -9 resumes: `MemoryJournal`, `FileJournal`, or the caller's own),
a bandwidth `Limiter`, and progress/stop callbacks.

Gives: `await FileFetch(...).run()` resolves, plans, fetches in parallel byte ranges (retrying,
resuming, taking over slow parts, one stream when the server ignores ranges), hashes as it
goes, verifies size, sha256 and header, and only then renames the `.part` to its final name;
it returns `Fetched` or raises `DownloadFailed` with a sentence for people (CancelledError when
cancelled; the journal keeps the parts either way).

README "Layout" says which module owns what.
"""

from lawchatd.fetch.engine import Fetched, FileFetch, Progress
from lawchatd.fetch.errors import DownloadFailed
from lawchatd.fetch.fetcher import Limiter
from lawchatd.fetch.journal import Entry, FileJournal, Journal, MemoryJournal
from lawchatd.fetch.options import FetchOptions
from lawchatd.fetch.partial import part_path
from lawchatd.fetch.plan import Part
from lawchatd.fetch.ref import FileRef
from lawchatd.fetch.status import Phase, Snapshot, Status
from lawchatd.fetch.verify import Verified

__all__ = [
    "DownloadFailed", "Entry", "FetchOptions", "Fetched", "FileFetch", "FileJournal", "FileRef",
    "Journal", "Limiter", "MemoryJournal", "Part", "Phase", "Progress", "Snapshot", "Status",
    "Verified", "part_path",
]  # fmt: skip
