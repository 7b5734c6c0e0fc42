"""GGUF header checks: a downloaded file must at least look like a model before it gets its name."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO

from lawchatd.errors import LawchatdError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Far above any real model; a larger count means the header is garbage.
_MAX_COUNT = 1 << 20


class NotGGUF(LawchatdError):
    """The file is not a GGUF model this daemon can load."""


def read_preamble(f: IO[bytes], name: str) -> tuple[int, int, int]:
    """Read the 24 bytes every GGUF starts with: (version, tensor count, key count).
    Raise NotGGUF unless they are sane."""
    head = f.read(24)
    if len(head) < 24 or head[:4] != MAGIC:
        raise NotGGUF(f"{name} is not a GGUF file (bad magic {head[:4]!r})")
    version, tensors, kvs = struct.unpack("<IQQ", head[4:24])
    if version not in SUPPORTED_VERSIONS:
        raise NotGGUF(f"{name} has GGUF version {version}; supported: {SUPPORTED_VERSIONS}")
    if tensors > _MAX_COUNT or kvs > _MAX_COUNT:
        raise NotGGUF(f"{name} has an implausible GGUF header ({tensors} tensors, {kvs} keys)")
    return version, tensors, kvs


def check_header(path: Path) -> int:
    """Raise NotGGUF unless `path` starts with a sane GGUF header; return its version."""
    with open(path, "rb") as f:
        return read_preamble(f, path.name)[0]
