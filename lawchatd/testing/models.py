"""The model files a test Hub serves, and the catalog that points the daemon at them."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from lawchatd.testing.ggufgen import make_tiny_llama

REPO = "test-org/law-chat-test"
HF_TOKEN = "hf_test_token_abcdef"
BLOCK = 8 << 20  # big enough for few syscalls, small enough that a 1 GB file costs little memory


@dataclass(frozen=True)
class ModelFile:
    variant: str
    filename: str
    size: int
    sha256: str


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def make_big_gguf(path: Path, size: int) -> Path:
    """A GGUF header and incompressible bytes: passes download checks, not meant to load."""
    with open(path, "wb") as f:
        header = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
        f.write(header)
        left = size - len(header)
        while left > 0:
            block = os.urandom(min(BLOCK, left))
            f.write(block)
            left -= len(block)
    return path


def describe(variant: str, path: Path) -> ModelFile:
    """What the catalog says of a file: its size and sha256."""
    return ModelFile(variant, path.name, path.stat().st_size, sha256_of(path))


def build_models(root: Path) -> dict[str, ModelFile]:
    """The test repo: loadable models of a few MB, one with broken tensors, one of 40 MB."""
    folder = root / REPO
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "big": make_big_gguf(folder / "big.gguf", 40 << 20),
        "tiny-a": make_tiny_llama(folder / "tiny-a.gguf", seed=1, pad_bytes=6 << 20),
        "tiny-b": make_tiny_llama(folder / "tiny-b.gguf", seed=2, pad_bytes=6 << 20),
        "tiny-small": make_tiny_llama(folder / "tiny-small.gguf", seed=3),
        "tiny-broken": make_tiny_llama(folder / "tiny-broken.gguf", seed=4, broken_tensors=True),
    }
    return {variant: describe(variant, path) for variant, path in made.items()}


def write_catalog(
    path: Path, models: dict[str, ModelFile], extra: str = "", *, repo: str = REPO
) -> Path:
    entries = [
        f'[[models]]\nvariant = "{m.variant}"\nrepo = "{repo}"\nfilename = "{m.filename}"\n'
        f'size = {m.size}\nsha256 = "{m.sha256}"\nlabel = "test model {m.variant}"\n'
        for m in models.values()
    ]
    path.write_text("\n".join(entries) + extra)
    return path
