"""The generated tiny GGUF models are what llama.cpp expects (or refuses, when asked to)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest
from llama_cpp import Llama

from lawchatd.testing.ggufgen import PAD_KEY, make_tiny_llama
from lawchatd.testing.lawchat_gguf import LawChatShape, make_lawchat_gguf


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


def _matrix_bytes(shape: LawChatShape, block_bytes: int) -> int:
    """Every quantised matrix of the shape, in blocks of 32 weights."""
    per_layer = 4 * shape.n_embd**2 + 3 * shape.n_embd * shape.n_ff
    weights = shape.n_layer * per_layer + 2 * shape.n_vocab * shape.n_embd
    return weights // 32 * block_bytes


@pytest.mark.parametrize(("quant", "block_bytes"), [("Q4_0", 18), ("Q8_0", 34)])
def test_law_chat_shape_in_q4_0_and_q8_0(tmp_path: Path, quant: str, block_bytes: int) -> None:
    shape = LawChatShape(n_layer=1)
    path = make_lawchat_gguf(tmp_path / f"{quant}.gguf", shape, quant=quant)
    norms = (2 * shape.n_layer + 1) * shape.n_embd * 4
    header = path.stat().st_size - _matrix_bytes(shape, block_bytes) - norms
    assert 0 < header < 2_000_000  # metadata and the 32,000-token vocabulary
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types == {quant, "F32"}
    llama = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    try:
        out = llama.create_completion("The court", max_tokens=8, temperature=0.8, seed=1)
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["choices"][0]["text"].isascii()
    finally:
        llama.close()
    # At law-chat's 32 layers: 3.79 GB in Q4_0 (the real file's size), 7.16 GB in Q8_0.
    full = _matrix_bytes(LawChatShape(), block_bytes) + 65 * 4096 * 4 + header
    assert round(full / 1e9, 2) == {"Q4_0": 3.79, "Q8_0": 7.16}[quant]
