"""The memory budget's parts: GGUF header values, model cost, cgroup limits."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lawchatd.modelhost import memory
from lawchatd.modelhost.ggufmeta import GGUFMetaError, read_shape
from lawchatd.testing.ggufgen import make_tiny_llama
from lawchatd.testing.lawchat_gguf import LawChatShape, make_lawchat_gguf


def test_header_of_a_law_chat_shaped_file(tmp_path: Path) -> None:
    path = make_lawchat_gguf(tmp_path / "m.gguf", LawChatShape(n_layer=1))
    shape = read_shape(path)
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.n_head_kv) == (1, 4096, 32, 32)
    assert (shape.n_ctx_train, shape.n_vocab, shape.file_size) == (4096, 32000, path.stat().st_size)
    # law-chat itself: 32 layers x 4096 cells x (K + V) x 4096 x f16 = 2 GiB of KV cache.
    full = memory.model_cost(shape.__class__(32, 4096, 32, 32, 4096, 32000, 3_825_812_864), 4096, 4)
    assert full.kv_cache == 2 << 30 and 5.5e9 < full.total < 6.5e9


def test_not_a_gguf_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(GGUFMetaError):
        read_shape(junk)
    # A garbage key count is refused from the preamble, not walked key by key.
    junk.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1 << 40) + bytes(100))
    with pytest.raises(GGUFMetaError, match="implausible"):
        read_shape(junk)


def test_context_is_the_largest_that_fits(tmp_path: Path) -> None:
    shape = read_shape(make_tiny_llama(tmp_path / "t.gguf"))
    full = memory.model_cost(shape, shape.n_ctx_train, 4).total
    assert memory.fit_context(shape, full, 4) == shape.n_ctx_train
    lowered = memory.fit_context(shape, full - 1, 4)
    assert memory.MIN_CTX <= lowered < shape.n_ctx_train and lowered % memory.CTX_STEP == 0
    assert memory.model_cost(shape, lowered, 4).total <= full - 1
    assert memory.fit_context(shape, 1000, 4) == 0


@pytest.mark.parametrize(
    ("text", "value"), [("max\n", None), ("9223372036854771712\n", None), ("4294967296\n", 1 << 32)]
)
def test_cgroup_limit_files(tmp_path: Path, text: str, value: int | None) -> None:
    (tmp_path / "memory.max").write_text(text)
    assert memory._read_int(tmp_path / "memory.max") == value


def test_room_is_capped_by_the_setting() -> None:
    room = memory.room(memory.process_rss() + (64 << 20))
    assert room.available <= 64 << 20 and room.limit is not None
    assert memory.room(None).available > 0
