"""Tiny llama-architecture GGUF files for tests.

The models have random F32 weights and a byte-level SentencePiece ("llama") vocabulary,
so llama.cpp loads them and generates (gibberish) in milliseconds. They stand in for the
multi-GB law-chat files wherever a test needs a real, loadable model.

The weights are steered so that the model only ever writes printable ASCII and never ends
on its own (finish_reason is "length" unless a stop sequence matches): random bytes
>= 0x80 would look like unfinished UTF-8, and llama-cpp keeps generating past max_tokens
while it waits for the rest of such a character.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

N_CTX = 2048


@dataclass(frozen=True)
class Shape:
    """Layer sizes: TINY for tests; a larger shape lets the benchmarks weigh a swap's memory."""

    n_embd: int = 64
    n_head: int = 4
    n_ff: int = 128
    n_layer: int = 2


TINY = Shape()

# Same layout as Llama-2's vocabulary: <unk>, <s>, </s>, then the 256 byte fallbacks.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPECIALS = [
    ("<unk>", gguf.TokenType.UNKNOWN),
    ("<s>", gguf.TokenType.CONTROL),
    ("</s>", gguf.TokenType.CONTROL),
]
TOKENS = [t for t, _ in _SPECIALS] + [f"<0x{b:02X}>" for b in range(256)]
TOKEN_TYPES = [int(k) for _, k in _SPECIALS] + [int(gguf.TokenType.BYTE)] * 256
N_VOCAB = len(TOKENS)

# A string KV holds the padding: llama.cpp refuses files with tensors it does not use
# ("wrong number of tensors") but ignores metadata keys it does not know.
PAD_KEY = "lawchatd.test.padding"


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    # Small values keep activations finite through the random layers.
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


def _allowed_outputs() -> np.ndarray:
    ids = [3 + b for b in range(0x20, 0x7F)] + [3 + 0x0A]  # printable ASCII and newline
    mask = np.zeros(N_VOCAB, dtype=bool)
    mask[ids] = True
    return mask


def _tensors(rng: np.random.Generator, broken: bool, shape: Shape) -> dict[str, np.ndarray]:
    """numpy shapes are (rows, cols); gguf stores them reversed, as llama.cpp expects."""
    n_embd, n_ff = shape.n_embd, shape.n_ff
    ones = np.ones(n_embd, dtype=np.float32)
    embd = _weights(rng, N_VOCAB, n_embd)
    # Dimension 0 of the residual stream is a large constant for every token, so after the
    # final norm it is about +8 whatever the layers did; a weight of -5 on it in a token's
    # output row puts that token's logit near -40: never sampled.
    embd[:, 0] = 10.0
    output = _weights(rng, N_VOCAB, n_embd)
    output[~_allowed_outputs(), 0] = -5.0
    t: dict[str, np.ndarray] = {
        "token_embd.weight": embd,
        "output_norm.weight": ones,
        "output.weight": output,
    }
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = ones
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t[p + name + ".weight"] = _weights(rng, n_embd, n_embd)
        t[p + "ffn_norm.weight"] = ones
        t[p + "ffn_gate.weight"] = _weights(rng, n_ff, n_embd)
        t[p + "ffn_up.weight"] = _weights(rng, n_ff, n_embd)
        t[p + "ffn_down.weight"] = _weights(rng, n_embd, n_ff)
    if broken:
        # A required tensor is missing: the header parses, llama.cpp refuses to load.
        del t[f"blk.{shape.n_layer - 1}.ffn_down.weight"]
    return t


def _padding(seed: int, n: int) -> str:
    """A NUL, then seeded random letters: llama.cpp reads metadata strings as C strings, so
    it sees "" and never copies or prints the megabytes; gguf itself stores any length."""
    letters = np.frombuffer(
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", np.uint8
    )
    rng = np.random.default_rng(seed + 1_000_003)
    return "\0" + letters[rng.integers(0, letters.size, max(n - 1, 0))].tobytes().decode()


def llama_writer(
    path: Path,
    name: str,
    file_type: gguf.LlamaFileType,
    shape: Any,
    n_ctx: int,
    vocab: tuple[list[str], list[int], list[float]],
) -> gguf.GGUFWriter:
    """A GGUFWriter holding a llama model's metadata: the shape (n_embd, n_layer, n_ff,
    n_head) and a SentencePiece-style vocabulary (tokens, types, scores); tensors follow."""
    tokens, types, scores = vocab
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_context_length(n_ctx)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head)
    w.add_rope_dimension_count(shape.n_embd // shape.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    return w


def make_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    pad_bytes: int = 0,
    broken_tensors: bool = False,
    shape: Shape = TINY,
) -> Path:
    """Write a ~450 KB llama GGUF to ``path`` and return it.

    ``seed`` changes the weights (and so the sha256); ``pad_bytes`` adds about that many
    bytes of unused metadata; ``broken_tensors`` leaves out a required tensor.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = llama_writer(
        path,
        f"tiny-llama-{seed}",
        gguf.LlamaFileType.ALL_F32,
        shape,
        N_CTX,
        (TOKENS, TOKEN_TYPES, [0.0] * N_VOCAB),
    )
    if pad_bytes > 0:
        w.add_string(PAD_KEY, _padding(seed, pad_bytes))
    for name, arr in _tensors(rng, broken_tensors, shape).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
