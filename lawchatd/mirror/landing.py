"""What pull-through writes into DIR: verified files, with their sidecar."""

from __future__ import annotations

import os
from pathlib import Path

from lawchatd.fetch.partial import fsync_dir
from lawchatd.mirror.paths import SIDECAR, inside, may_create
from lawchatd.mirror.upstream import UpstreamFile


def publish(verified: Path, target: Path, file: UpstreamFile, root: Path) -> None:
    """Move a verified file into DIR, with its sha256 beside it so it is never hashed again."""
    if not may_create(root, target):  # checked at the start too; a link may have appeared since
        raise PermissionError(f"{target} would lead outside the mirror")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not inside(root, target.parent):
        raise PermissionError(f"{target} would lead outside the mirror")
    # An old sidecar goes first and the new one comes last: a crash in between leaves a file
    # without a sidecar (hashed at the next request), never one beside the wrong sha256.
    sidecar = target.with_name(target.name + SIDECAR)
    sidecar.unlink(missing_ok=True)
    os.replace(verified, target)
    if file.sha256 is not None:
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")  # hidden until renamed
        tmp.write_text(f"{file.sha256}  {target.name}\n")
        os.replace(tmp, sidecar)
    fsync_dir(target.parent)
