"""Is this file the model? Checked before it gets its final name, and again when it changed."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from lawchatd.errors import LawchatdError
from lawchatd.fetch.gguf import NotGGUF, check_header
from lawchatd.fetch.ref import FileRef


@dataclass(frozen=True)
class Verified:
    """A final file as it was when its sha256 was checked: changed means check again."""

    filename: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str


DETAIL = " Detail: "  # what people read comes first; the technical detail follows this


def check_bytes(
    ref: FileRef, upstream_sha256: str | None, size: int, digest: str, path: Path
) -> str | None:
    """What is wrong with a finished partial file (which the caller deletes), in words for the
    person who asked, the technical detail after DETAIL; None when it is the file."""
    if size != ref.size:
        return _words(
            "The file received is not the size the publisher gave; it was deleted. Try again.",
            f"size mismatch: expected {ref.size} bytes, got {size}",
        )
    for name, want in ((ref.expected_by, ref.sha256), ("Hub", upstream_sha256)):
        if want and digest != want:
            return _words(
                "The file received does not match the checksum the publisher gave; it was "
                "deleted. Try again; if it happens again the source may be damaged.",
                f"sha256 mismatch: the {name} expects {want}, the bytes hash to {digest}",
            )
    if ref.gguf:
        try:
            check_header(path)
        except NotGGUF as exc:
            return _words(
                "The file received is not a GGUF model file; it was deleted. Check that the "
                "catalog or the mirror names the right file.",
                str(exc),
            )
    return None


def _words(sentence: str, detail: str) -> str:
    return f"{sentence}{DETAIL}{detail}"


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode): what tells a file apart from a replaced one; None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def record_of(name: str, path: Path, sha256: str) -> Verified:
    """What was verified, kept under the name the caller gives (a path may hold a folder:
    two files of one base name are two records)."""
    st = os.stat(path)
    return Verified(name, st.st_size, st.st_mtime_ns, st.st_ino, sha256)


def unchanged(path: Path, record: Verified | None) -> bool:
    """The file is still the one that was verified (same size, mtime and inode)."""
    if record is None:
        return False
    return stat_key(path) == (record.size, record.mtime_ns, record.inode)


class Stopped(LawchatdError):
    """A hash was given up because the daemon is stopping."""


HASH_CHUNK = 8 << 20


def hash_file(path: Path, stop: threading.Event | None = None) -> str:
    """The sha256 of a file, read in chunks so a stopping daemon need not wait for a 7 GB
    file: the thread checks `stop` between chunks (asyncio cannot cancel a thread)."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            if stop is not None and stop.is_set():
                raise Stopped(path.name)
            digest.update(view[:n])
    return digest.hexdigest()
