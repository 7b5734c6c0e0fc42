"""GGUF files of law-chat's real shape (Llama-2-7B, Q4_0) with random weights.

Same tensors, sizes and quantisation as TheBloke's law-chat.Q4_0.gguf: 32 layers, 4096 wide,
11008 FFN, 32 heads, a 32000-token SentencePiece vocabulary, context length 4096, every
matrix Q4_0 (the norms F32). So loading, memory and decode cost are the real ones; the text
is gibberish. ``n_layer`` makes faster versions of the same width for tests. ``quant="Q8_0"``
writes the Q8_0-sized variant instead (7.16 GB at 32 layers), for swaps between the two.

Blocks are written directly as random integers under a small fp16 scale (no float
quantisation to wait for): a 3.8 GB file takes seconds, streamed tensor by tensor.

The output is steered so the model writes only printable word pieces and never ends on its
own (as ggufgen.py does): dimension 0 of every embedding is a large constant, and the
output rows of the byte tokens >= 0x80 and of the control tokens weigh it negatively.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from lawchatd.testing.ggufgen import BOS_ID, EOS_ID, TOKEN_TYPES, TOKENS, UNK_ID, llama_writer

BLOCK = 32  # weights per block, Q4_0 and Q8_0 alike


@dataclass(frozen=True)
class Quant:
    ggml_type: gguf.GGMLQuantizationType
    file_type: gguf.LlamaFileType
    block_bytes: int  # fp16 scale + the 32 weights


QUANTS = {
    "Q4_0": Quant(gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0, 18),
    "Q8_0": Quant(gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, 34),
}


@dataclass(frozen=True)
class LawChatShape:
    n_layer: int = 32
    n_embd: int = 4096
    n_ff: int = 11008
    n_head: int = 32
    n_vocab: int = 32000
    n_ctx: int = 4096


LAW_CHAT = LawChatShape()


# Enough of English and of the law for prompts to take about as many tokens as with Llama-2's
# own vocabulary (a question of 80 characters: ~20 tokens, not 80 byte tokens).
_WORD_TEXT = """the of and to a in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there can all their has been if more when will would
who so no what must may any such under court law legal contract agreement party parties claim
claims damages breach tort liability negligence duty care plaintiff defendant evidence prove
proof oral written sell sale land property buyer seller enforceable statute frauds act case
cases judge jury appeal right rights obligation obligations notice term terms clause lease
tenant landlord employer employee owner trust estate will wills consent fraud act void
valid how why does did do should could between against about over after before also only
other into than then them these those some its our your we us one two three first may i my
is an oral agreement"""
WORDS = _WORD_TEXT.split()


def vocabulary(n_vocab: int) -> tuple[list[str], list[int], list[float]]:
    """Llama-2's layout (<unk>, <s>, </s>, 256 byte tokens), then the printable characters,
    every "▁"-prefix of a few hundred common words (SentencePiece merges need each step),
    then filler pieces "▁w<n>". Longer pieces score higher, so merges prefer them."""
    chars = ["\u2581" if c == " " else c for c in map(chr, range(0x20, 0x7F))]
    pieces = {f"\u2581{w[:k]}" for w in WORDS for k in range(1, len(w) + 1)}
    pieces |= {f"{p}{c}" for p in ("[", "[/", "<<", "<</") for c in "ISN"}
    pieces |= {
        "[/",
        "[I",
        "[IN",
        "[INS",
        "[INST",
        "[INST]",
        "[/I",
        "[/IN",
        "[/INS",
        "[/INST",
        "[/INST]",
    }
    words = [p for p in sorted(pieces, key=lambda t: (len(t), t)) if p not in chars]
    extra = n_vocab - len(TOKENS) - len(chars) - len(words)
    tokens = TOKENS + chars + words + [f"\u2581w{i}" for i in range(extra)]
    types = TOKEN_TYPES + [int(gguf.TokenType.NORMAL)] * (n_vocab - len(TOKENS))
    scores = [0.0] * (len(TOKENS) + len(chars)) + [float(len(w)) for w in words]
    scores += [-float(i) for i in range(extra)]
    return tokens, types, scores


def _scales(rng: np.random.Generator, n_blocks: int, scale: float) -> np.ndarray:
    d = (scale * (0.75 + 0.5 * rng.random(n_blocks, dtype=np.float32))).astype(np.float16)
    return d.view(np.uint8).reshape(n_blocks, 2)


def _blocks(rng: np.random.Generator, q: str, rows: int, cols: int, scale: float) -> np.ndarray:
    """Random blocks: fp16 scales around ``scale``, weights uniform in +-7 scales in both
    types (zero mean, so 32 layers do not add up a common offset and blow the activations
    up; the same distribution, so Q4_0 and Q8_0 files behave alike)."""
    n_blocks = rows * cols // BLOCK
    out = np.empty((n_blocks, QUANTS[q].block_bytes), dtype=np.uint8)
    out[:, :2] = _scales(rng, n_blocks, scale)
    if q == "Q8_0":
        out[:, 2:] = rng.integers(-7, 8, size=(n_blocks, BLOCK), dtype=np.int8).view(np.uint8)
    else:  # Q4_0: nibbles 1..15 mean weights -7..7 (nibble 8 is zero)
        nibbles = rng.integers(1, 16, size=(n_blocks, 2, 16), dtype=np.uint8)
        out[:, 2:] = nibbles[:, 0] | (nibbles[:, 1] << 4)
    return out.reshape(rows, -1)


def _set_first_weight(t: np.ndarray, q: str, rows: np.ndarray, value: float) -> None:
    """Make weight 0 of each row in ``rows`` equal ``value``; the rest of its block becomes 0
    (Q4_0: scale value/-8, nibble 0 for weight 0, 8 (= zero) for the others; Q8_0: scale
    value/100, int8 100 then zeros)."""
    blocks = t.reshape(t.shape[0], -1, QUANTS[q].block_bytes)[rows, 0]
    if q == "Q8_0":
        blocks[:, :2] = np.array([value / 100.0], dtype=np.float16).view(np.uint8)
        blocks[:, 2:] = 0
        blocks[:, 2] = 100
    else:
        blocks[:, :2] = np.array([value / -8.0], dtype=np.float16).view(np.uint8)
        blocks[:, 2:] = 0x88
        blocks[:, 2] = 0x80  # low nibble of byte 0 is weight 0
    t.reshape(t.shape[0], -1, QUANTS[q].block_bytes)[rows, 0] = blocks


def _banned(tokens: list[str]) -> np.ndarray:
    banned = np.zeros(len(tokens), dtype=bool)
    banned[[UNK_ID, BOS_ID, EOS_ID]] = True
    banned[3 + 0x80 : 3 + 0x100] = True  # bytes that would start unfinished UTF-8
    banned[3 : 3 + 0x20] = True  # control characters
    return banned


def _tensors(
    rng: np.random.Generator, s: LawChatShape, q: str, tokens: list[str]
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, data) in file order; numpy shapes are (rows, cols) = gguf's reversed."""
    ones = np.ones(s.n_embd, dtype=np.float32)

    def _q(rows: int, cols: int, scale: float) -> np.ndarray:
        return _blocks(rng, q, rows, cols, scale)

    embd = _q(s.n_vocab, s.n_embd, 0.002)
    _set_first_weight(embd, q, np.arange(s.n_vocab), 100.0)
    yield "token_embd.weight", embd
    for i in range(s.n_layer):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", ones
        for name in ("attn_q", "attn_k", "attn_v"):
            yield p + name + ".weight", _q(s.n_embd, s.n_embd, 0.004)
        yield p + "attn_output.weight", _q(s.n_embd, s.n_embd, 0.001)
        yield p + "ffn_norm.weight", ones
        yield p + "ffn_gate.weight", _q(s.n_ff, s.n_embd, 0.004)
        yield p + "ffn_up.weight", _q(s.n_ff, s.n_embd, 0.004)
        yield p + "ffn_down.weight", _q(s.n_embd, s.n_ff, 0.001)
    yield "output_norm.weight", ones
    out = _q(s.n_vocab, s.n_embd, 0.004)
    _set_first_weight(out, q, np.flatnonzero(_banned(tokens)), -5.0)
    yield "output.weight", out


def _infos(s: LawChatShape) -> Iterator[tuple[str, tuple[int, int] | tuple[int], bool]]:
    """(name, numpy shape, quantised) in the same order as _tensors, without the data."""
    yield "token_embd.weight", (s.n_vocab, s.n_embd), True
    for i in range(s.n_layer):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (s.n_embd,), False
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            yield p + name + ".weight", (s.n_embd, s.n_embd), True
        yield p + "ffn_norm.weight", (s.n_embd,), False
        yield p + "ffn_gate.weight", (s.n_ff, s.n_embd), True
        yield p + "ffn_up.weight", (s.n_ff, s.n_embd), True
        yield p + "ffn_down.weight", (s.n_embd, s.n_ff), True
    yield "output_norm.weight", (s.n_embd,), False
    yield "output.weight", (s.n_vocab, s.n_embd), True


def make_lawchat_gguf(
    path: Path, shape: LawChatShape = LAW_CHAT, *, seed: int = 0, quant: str = "Q4_0"
) -> Path:
    """Write the model to ``path`` (streamed: memory stays at one tensor); ``quant`` is
    "Q4_0" or "Q8_0"."""
    path = Path(path)
    q = QUANTS[quant]
    tokens, types, scores = vocabulary(shape.n_vocab)
    w = llama_writer(
        path,
        f"law-chat-shaped-{shape.n_layer}l-{seed}",
        q.file_type,
        shape,
        shape.n_ctx,
        (tokens, types, scores),
    )
    for name, rows_cols, quantised in _infos(shape):
        if quantised:
            rows, cols = rows_cols
            row_bytes = cols // BLOCK * q.block_bytes
            w.add_tensor_info(
                name, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes, q.ggml_type
            )
        else:
            w.add_tensor_info(name, rows_cols, np.dtype(np.float32), rows_cols[0] * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _name, data in _tensors(np.random.default_rng(seed), shape, quant, tokens):
        w.write_tensor_data(data)
    w.close()
    return path
