"""Which `.part` file the journal's parts describe: its inode, size and mtime, recorded with
the parts, so that a partial file replaced, shortened or rewritten by another program between
two runs is noticed before a byte of it is trusted (it used to be noticed only by the final
sha256, after fetching the rest for nothing).

An entry recorded at a clean end (`settled`: every write had returned) must match exactly. One
recorded while running may be followed by writes a kill -9 interrupted: the file may then be
larger and a little newer, never smaller and never a different inode. After a reboot only the
inode is compared (the size and mtime of unsynced writes are lost with the page cache; the
parts are cut to what the file holds anyway).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# How much newer than its last record a file may be after a kill -9: the writes in flight
# then (the record follows them within FetchOptions.record_seconds, 0.05 s, when all is well).
LATE_WRITES_NS = 2_000_000_000


@dataclass(frozen=True)
class PartIdentity:
    inode: int
    size: int
    mtime_ns: int
    settled: bool  # recorded after every write had returned

    @classmethod
    def of(cls, st: os.stat_result, *, settled: bool) -> PartIdentity:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, settled)

    def text(self) -> str:
        state = "settled" if self.settled else "running"
        return f"{self.inode}:{self.size}:{self.mtime_ns}:{state}"

    @classmethod
    def parse(cls, text: str | None) -> PartIdentity | None:
        try:
            inode, size, mtime_ns, state = (text or "").split(":")
            return cls(int(inode), int(size), int(mtime_ns), state == "settled")
        except ValueError:
            return None  # none recorded (an older journal): nothing to compare


def change(recorded: str | None, path: Path, *, same_boot: bool) -> str | None:
    """How the file at `path` differs from the one `recorded` describes, in words; None when
    it is the same file (or nothing was recorded, or it is gone: there is nothing to trust).
    A file operation: call it in a thread."""
    was = PartIdentity.parse(recorded)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if was is None:
        return None
    if st.st_ino != was.inode:
        return "was replaced by another file"
    if not same_boot:
        return None
    if st.st_size < was.size:
        return f"was shortened from {was.size} to {st.st_size} bytes"
    if was.settled and (st.st_size != was.size or st.st_mtime_ns != was.mtime_ns):
        return "was changed by another program"
    if st.st_mtime_ns > was.mtime_ns + LATE_WRITES_NS:
        return "was changed by another program"
    return None
