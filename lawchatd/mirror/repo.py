"""A repo is a folder DIR/<org>/<name>: its files, which of them are LFS, and its commit id."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lawchatd.mirror.paths import inside, is_hidden

# The Hub stores files over 10 MB in LFS whatever .gitattributes says.
LFS_MIN_SIZE = 10 << 20
# The Hub's default .gitattributes for a new model repo (plus *.gguf), used when DIR has none.
DEFAULT_LFS = [
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gguf",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lfs.*",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "*.tar.*",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
]


@dataclass(frozen=True)
class Entry:
    relpath: str  # posix, relative to the repo folder
    path: Path
    size: int
    mtime_ns: int
    lfs: bool


@dataclass(frozen=True)
class Repo:
    commit: str
    entries: dict[str, Entry]  # visible files only, by relpath

    def folders(self) -> set[str]:
        """Every folder that holds a visible file (relpaths, without the root "")."""
        found: set[str] = set()
        for rel in self.entries:
            parts = rel.split("/")[:-1]
            found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return found

    @staticmethod
    def scan(root: Path, repo_dir: Path) -> Repo | None:
        """Blocking: list the repo folder (run in a thread). None if it is not a folder in root."""
        if not repo_dir.is_dir() or not inside(root, repo_dir):
            return None
        found = list(_walk(root, repo_dir))
        found.sort()
        # Sidecars count towards the commit: a new checksum is a new version of the repo.
        digest = hashlib.sha1()
        for rel, _, size, mtime_ns in found:
            digest.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
        patterns = _lfs_patterns(repo_dir)
        entries = {
            rel: Entry(rel, path, size, mtime_ns, _is_lfs(rel, size, patterns))
            for rel, path, size, mtime_ns in found
            if not is_hidden(rel)
        }
        return Repo(digest.hexdigest(), entries)


def _walk(root: Path, repo_dir: Path):
    # Linked folders are not descended (followlinks=False); linked files are kept only when
    # their real path is inside DIR: DIR/org/etc-link -> /etc serves nothing.
    for dirpath, dirnames, filenames in os.walk(repo_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") and name != ".gitattributes":
                continue
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue  # vanished or a broken link
            if not path.is_file() or (path.is_symlink() and not inside(root, path)):
                continue
            yield path.relative_to(repo_dir).as_posix(), path, st.st_size, st.st_mtime_ns


def _lfs_patterns(repo_dir: Path) -> list[str]:
    try:
        text = (repo_dir / ".gitattributes").read_text(errors="replace")
    except OSError:
        return DEFAULT_LFS
    patterns = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 1 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _is_lfs(relpath: str, size: int, patterns: list[str]) -> bool:
    if size >= LFS_MIN_SIZE:
        return True
    name = relpath.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relpath if "/" in p else name, p.lstrip("/")) for p in patterns)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's bytes (the Hub's oid and ETag for a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git blob the Hub stores for an LFS file; its oid is the tree's `oid`."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )
