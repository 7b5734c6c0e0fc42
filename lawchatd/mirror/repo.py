"""A repo is a folder DIR/<org>/<name>: its files and which of them are LFS (its commit comes
from their content: Core.commit_of)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from lawchatd.mirror.paths import SIDECAR, inside, is_hidden

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


Stamp = tuple[int, int]  # (size, mtime_ns) of a file, (0, mtime_ns) of a folder


@dataclass(frozen=True)
class Entry:
    relpath: str  # posix, relative to the repo folder
    path: Path
    size: int
    mtime_ns: int
    lfs: bool
    sidecar: Stamp | None = None  # of `<file>.sha256`, if there is one

    @property
    def stamps(self) -> tuple[Stamp, Stamp | None]:
        """What tells this version of the file from the next (the digests' cache key)."""
        return (self.size, self.mtime_ns), self.sidecar


@dataclass(frozen=True)
class Repo:
    entries: dict[str, Entry]  # visible files only, by relpath
    # Every folder walked and .gitattributes, as the scan saw them: a file added, removed or
    # renamed (a publish) changes its folder's mtime, so the scan holds while these do (index.py).
    watched: dict[Path, Stamp | None] = field(default_factory=dict)
    scanned_ns: int = 0  # wall clock when the scan began

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
        scanned_ns = time.time_ns()
        watched: dict[Path, Stamp | None] = {}
        found = sorted(_walk(root, repo_dir, watched))
        watched[repo_dir / ".gitattributes"] = stamp(repo_dir / ".gitattributes")
        seen = {rel: (size, mtime_ns) for rel, _, size, mtime_ns in found}
        patterns = _lfs_patterns(repo_dir)
        entries = {
            rel: Entry(
                rel, path, size, mtime_ns, _is_lfs(rel, size, patterns), seen.get(rel + SIDECAR)
            )
            for rel, path, size, mtime_ns in found
            if not is_hidden(rel)
        }
        return Repo(entries, watched, scanned_ns)


def stamp(path: Path) -> Stamp | None:
    """Blocking: (size, mtime_ns) of a file, (0, mtime_ns) of a folder; None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (0 if stat.S_ISDIR(st.st_mode) else st.st_size), st.st_mtime_ns


def _walk(root: Path, repo_dir: Path, folders: dict[Path, Stamp | None]):
    # Linked folders are not descended; linked files are kept only when their real path is
    # inside DIR: DIR/org/etc-link -> /etc serves nothing.
    todo = [repo_dir]
    while todo:
        folder = todo.pop()
        folders[folder] = stamp(folder)  # before listing: a change during the scan shows later
        try:
            with os.scandir(folder) as listing:
                names = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
        except OSError:
            continue
        for name, is_folder in names:
            if name.startswith(".") and name != ".gitattributes":
                continue
            path = folder / name
            if is_folder:
                todo.append(path)
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # vanished or a broken link
            if not stat.S_ISREG(st.st_mode) or (path.is_symlink() and not inside(root, path)):
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
