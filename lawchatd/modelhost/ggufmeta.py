"""The few GGUF header values the memory budget needs, read without loading the model.

Only scalar keys are decoded; arrays (the 32000-token vocabulary) are skipped by seeking,
so reading a 4 GB file's header takes milliseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lawchatd.errors import LawchatdError
from lawchatd.fetch.gguf import NotGGUF, read_preamble

# GGUF value types: fixed-size scalars (struct format), 8 = string, 9 = array.
_SCALAR = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ctx_train: int
    n_vocab: int
    file_size: int

    @property
    def kv_bytes_per_token(self) -> int:
        """f16 K and V over all layers, for one token of context."""
        n_embd_kv = self.n_embd * self.n_head_kv // self.n_head
        return self.n_layer * 2 * n_embd_kv * 2


class GGUFMetaError(LawchatdError):
    pass


def _read(f: IO[bytes], fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFMetaError("truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: IO[bytes]) -> bytes:
    n = _read(f, "Q")
    if n > 1 << 30:
        raise GGUFMetaError("implausible string in GGUF header")
    return f.read(n)


def _skip_or_read(f: IO[bytes], vtype: int) -> Any:
    if vtype in _SCALAR:
        return _read(f, _SCALAR[vtype])
    if vtype == _STRING:
        return _string(f)
    if vtype != _ARRAY:
        raise GGUFMetaError(f"unknown GGUF value type {vtype}")
    etype, count = _read(f, "I"), _read(f, "Q")
    if etype in _SCALAR:
        f.seek(count * struct.calcsize("<" + _SCALAR[etype]), 1)
    elif etype == _STRING:  # the tokenizer's 32,000 tokens: skipped, not read
        for _ in range(count):
            f.seek(_read(f, "Q"), 1)
    else:
        for _ in range(count):
            _skip_or_read(f, etype)
    return count  # an array's value here is its length (the vocabulary size)


def read_shape(path: Path) -> ModelShape:
    """Raise GGUFMetaError when the file is not a llama-like GGUF model."""
    path = Path(path)
    kv: dict[str, Any] = {}
    with open(path, "rb", buffering=1 << 16) as f:
        try:
            _, _, n_keys = read_preamble(f, path.name)
        except NotGGUF as exc:
            raise GGUFMetaError(str(exc)) from None
        for _ in range(n_keys):
            key = _string(f).decode("utf-8", "replace")
            kv[key] = _skip_or_read(f, _read(f, "I"))
    arch = kv.get("general.architecture", b"llama").decode()

    def need(name: str) -> int:
        value = kv.get(f"{arch}.{name}")
        if not isinstance(value, int):
            raise GGUFMetaError(f"{path.name} has no {arch}.{name}")
        return value

    n_head = need("attention.head_count")
    return ModelShape(
        n_layer=need("block_count"),
        n_embd=need("embedding_length"),
        n_head=n_head,
        n_head_kv=kv.get(f"{arch}.attention.head_count_kv", n_head),
        n_ctx_train=need("context_length"),
        n_vocab=kv.get("tokenizer.ggml.tokens", 32000),
        file_size=path.stat().st_size,
    )
