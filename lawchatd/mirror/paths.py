"""Request paths and real paths: nothing outside DIR is ever named, listed or opened."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lawchatd.errors import UserError

SIDECAR = ".sha256"


class BadPath(UserError):
    """A request path that tries to leave DIR."""


def segments(value: str, *, single: bool = False) -> list[str]:
    """Split a request path component into safe segments, or raise BadPath."""
    parts = value.split("/")
    if (single and len(parts) != 1) or "\\" in value or "\0" in value:
        raise BadPath(value)
    if any(p in ("", ".", "..") for p in parts):
        raise BadPath(value)
    return parts


def is_hidden(relpath: str) -> bool:
    """Sidecars and dot-files (the staging area included) are never served."""
    return relpath.endswith(SIDECAR) or any(p.startswith(".") for p in relpath.split("/"))


def inside(root: Path, path: Path | str) -> bool:
    """Whether the real path of `path` (symlinks followed) lies in `root` (already real)."""
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def open_inside(root: Path, path: Path) -> int:
    """A read-only fd on `path`, refusing a real path outside `root` (OSError otherwise)."""
    real = os.path.realpath(path)
    if not inside(root, real):
        raise PermissionError(f"{path} leads outside the mirror")
    # O_NOFOLLOW: a link swapped in after realpath() is refused rather than followed.
    return os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def may_create(root: Path, path: Path) -> bool:
    """Whether creating `path` (and its missing folders) stays in `root`: no link leads out."""
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return inside(root, existing) and (not path.exists() or inside(root, path))


def folders_of(files: Iterable[str]) -> set[str]:
    """Every folder above the given relative paths (`a/b/c.txt` -> `a`, `a/b`)."""
    found: set[str] = set()
    for rel in files:
        parts = rel.split("/")[:-1]
        found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return found
