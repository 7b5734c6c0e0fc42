"""The generated tiny GGUF models are what llama.cpp expects (or refuses, when asked to)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest
from llama_cpp import Llama

from tests.ggufgen import PAD_KEY, make_tiny_llama


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_and_generates(tmp_path: Path) -> None:
    path = make_tiny_llama(tmp_path / "tiny.gguf")
    assert 100_000 < path.stat().st_size < 1_000_000
    llama = Llama(model_path=str(path), n_ctx=256, verbose=False)
    try:
        out = llama.create_completion("Hello", max_tokens=64, temperature=1.0, seed=3)
        assert out["usage"]["prompt_tokens"] > 0
        # Steered weights: printable ASCII only, and no end-of-sequence before max_tokens.
        assert out["choices"][0]["finish_reason"] == "length"
        text = out["choices"][0]["text"]
        assert len(text) == 64 and text.replace("\n", "").isprintable() and text.isascii()
    finally:
        llama.close()


def test_seed_changes_the_file(tmp_path: Path) -> None:
    a = make_tiny_llama(tmp_path / "a.gguf", seed=1)
    b = make_tiny_llama(tmp_path / "b.gguf", seed=2)
    again = make_tiny_llama(tmp_path / "a2.gguf", seed=1)
    assert _sha256(a) != _sha256(b)
    assert _sha256(a) == _sha256(again)


def test_padding_keeps_a_valid_loadable_gguf(tmp_path: Path) -> None:
    path = make_tiny_llama(tmp_path / "big.gguf", pad_bytes=3_000_000)
    assert 3_000_000 < path.stat().st_size < 4_000_000
    assert PAD_KEY in gguf.GGUFReader(path).fields
    llama = Llama(model_path=str(path), n_ctx=64, verbose=False)
    # llama.cpp sees the padding as an empty C string: nothing big to copy or print.
    assert llama.metadata[PAD_KEY] == ""
    llama.close()


def test_broken_tensors_parse_but_do_not_load(tmp_path: Path) -> None:
    path = make_tiny_llama(tmp_path / "broken.gguf", broken_tensors=True)
    assert path.read_bytes()[:4] == b"GGUF"
    assert len(gguf.GGUFReader(path).tensors) > 0
    with pytest.raises(ValueError):
        Llama(model_path=str(path), n_ctx=64, verbose=False)
