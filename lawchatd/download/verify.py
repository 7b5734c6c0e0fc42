"""Is this file the model? Checked before it gets its final name, and again when it changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lawchatd.catalog import ModelSpec
from lawchatd.gguf import NotGGUF, check_header
from lawchatd.store import DownloadRow, Verified


def check_bytes(
    spec: ModelSpec, row: DownloadRow, size: int, digest: str, path: Path
) -> str | None:
    """What is wrong with a finished partial file, in words; None when it is the model."""
    if size != spec.size:
        return f"size mismatch: expected {spec.size} bytes, got {size}"
    for name, want in (("catalog", spec.sha256), ("Hub", row.upstream_sha256)):
        if want and digest != want:
            return f"sha256 mismatch: the {name} expects {want}, the bytes hash to {digest}"
    try:
        check_header(path)
    except NotGGUF as exc:
        return str(exc)
    return None


def record_of(path: Path, sha256: str) -> Verified:
    st = os.stat(path)
    return Verified(path.name, st.st_size, st.st_mtime_ns, st.st_ino, sha256)


def unchanged(path: Path, record: Verified | None) -> bool:
    """The file is still the one that was verified (same size, mtime and inode)."""
    if record is None:
        return False
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (record.size, record.mtime_ns, record.inode)


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
