"""What the upstream said a revision is: its commit, and the tree at that commit.

A pull-through mirror answers every route for a revision with the commit and the file list the
upstream gave for it, not with what happens to be in DIR: clients keep one snapshot per upstream
commit, and offline the mirror still knows the whole repo (and so which files it lacks). One JSON
file per repo, DIR/.lawchatd-mirror/trees/<org>/<name>.json, replaced atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lawchatd.mirror.paths import folders_of


@dataclass(frozen=True)
class TreeFile:
    size: int
    sha256: str | None  # LFS files (the Hub gives no sha256 for the others)
    blob_oid: str | None  # the git blob id (of the LFS pointer, for an LFS file)


@dataclass(frozen=True)
class Tree:
    commit: str
    files: dict[str, TreeFile]
    recorded_at: float = field(default_factory=time.time)

    def folders(self) -> set[str]:
        return folders_of(self.files)


@dataclass
class RepoRecord:
    """One repo's refs (a branch or tag -> the commit last seen there) and trees by commit."""

    refs: dict[str, str] = field(default_factory=dict)
    trees: dict[str, Tree] = field(default_factory=dict)

    def at(self, revision: str) -> Tree | None:
        commit = self.refs.get(revision, revision)
        return self.trees.get(commit)

    def to_json(self) -> dict[str, Any]:
        return {
            "refs": self.refs,
            "trees": {
                commit: {
                    "recorded_at": tree.recorded_at,
                    "files": {path: asdict(f) for path, f in tree.files.items()},
                }
                for commit, tree in self.trees.items()
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> RepoRecord:
        trees = {
            str(commit): Tree(
                str(commit),
                {str(p): TreeFile(**f) for p, f in t["files"].items()},
                float(t.get("recorded_at", 0)),
            )
            for commit, t in data.get("trees", {}).items()
        }
        refs = {str(k): str(v) for k, v in data.get("refs", {}).items() if v in trees}
        return cls(refs, trees)


def load_record(path: Path) -> RepoRecord:
    """Blocking: the record kept in `path`; an empty one if there is none (or it is unreadable:
    it is learnt again from the upstream)."""
    try:
        return RepoRecord.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return RepoRecord()


def save_record(path: Path, data: dict[str, Any]) -> None:
    """Blocking: write a record's JSON to `path` atomically (a crash leaves the old or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
