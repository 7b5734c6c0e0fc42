"""Every Sampling field reaches the sampler chain: real (tiny) llama models, no mocks.

The tiny model writes one printable ASCII byte per token (token id = 3 + byte), so texts
and token counts can be checked character by character.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lawchatd.modelhost import Conversation, InvalidRequest, ModelHost
from lawchatd.modelhost.chat_types import Sampling
from lawchatd.modelhost.sampling import TextOut
from lawchatd.testing.ggufgen import make_tiny_llama

USER = [{"role": "user", "content": "What is a tort?"}]
ASK = Conversation.parse(USER)


def tok(ch: str) -> int:
    return 3 + ord(ch)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("m") / "a.gguf", seed=1)


@pytest.fixture
async def host(model: Path) -> AsyncIterator[ModelHost]:
    h = ModelHost(n_ctx=1024, parallel=2)
    await h.load("a", model)
    yield h
    await h.close()


async def text(host: ModelHost, **kw: object) -> str:
    return (await host.chat(ASK, Sampling(**kw))).text  # type: ignore[arg-type]


async def test_max_tokens_is_exact_and_seed_repeats(host: ModelHost) -> None:
    for n in (1, 7, 33):
        out = await host.chat(ASK, Sampling(max_tokens=n, seed=5))
        assert out.usage.completion_tokens == n and len(out.text) == n
        assert out.finish_reason == "length"
    same = [await text(host, max_tokens=24, seed=42) for _ in range(2)]
    assert same[0] == same[1]
    assert await text(host, max_tokens=24, seed=43) != same[0]


async def test_stop_string_ends_the_answer_without_it(host: ModelHost) -> None:
    whole = await text(host, max_tokens=40, temperature=0)
    stop = whole[20:23]
    out = await host.chat(ASK, Sampling(max_tokens=40, temperature=0, stop=("\x00", stop)))
    assert out.text == whole[: whole.index(stop)] and out.finish_reason == "stop"
    assert out.usage.completion_tokens == whole.index(stop) + 3  # its tokens were generated


async def test_logit_bias_forces_and_bans(host: ModelHost) -> None:
    assert await text(host, max_tokens=12, logit_bias={tok("q"): 100}) == "q" * 12
    allowed = {"x", "y"}
    bans = {tok(chr(b)): -100.0 for b in range(0x0A, 0x7F) if chr(b) not in allowed}
    assert set(await text(host, max_tokens=30, logit_bias=bans)) <= allowed
    with pytest.raises(InvalidRequest, match="vocabulary"):
        await host.chat(ASK, Sampling(logit_bias={99999: 1.0}))


async def test_frequency_and_presence_penalties(host: ModelHost) -> None:
    favour = {tok("a"): 30.0}
    assert await text(host, max_tokens=40, temperature=0, logit_bias=favour) == "a" * 40
    damped = await text(host, max_tokens=40, temperature=0, logit_bias=favour, frequency_penalty=2)
    assert damped.startswith("a" * 10) and damped.count("a") < 30
    slight = {tok("a"): 1.5}
    assert await text(host, max_tokens=20, temperature=0, logit_bias=slight) == "a" * 20
    shy = await text(host, max_tokens=20, temperature=0, logit_bias=slight, presence_penalty=2)
    assert shy.count("a") <= 2


async def test_json_object_is_valid_json(host: ModelHost) -> None:
    out = await host.chat(ASK, Sampling(max_tokens=200, json_object=True, seed=3))
    assert out.finish_reason == "stop"
    assert isinstance(json.loads(out.text), dict)


def test_text_out_holds_back_a_possible_stop_and_whole_characters() -> None:
    t = TextOut(("END",))
    assert t.feed(b"abcE") == ("abc", False)
    assert t.feed(b"N") == ("", False)
    assert t.feed(b"x") == ("ENx", False)
    assert t.feed("é".encode()[:1]) == ("", False)  # half a character waits
    assert t.feed("é".encode()[1:] + b"EN") == ("é", False)
    assert t.feed(b"D tail") == ("", True)
    cut = TextOut(())
    assert cut.feed("€".encode()[:2]) == ("", False) and cut.flush() == "\ufffd"


async def test_a_follow_up_reuses_the_cached_conversation(host: ModelHost) -> None:
    engine = host._swap.current.engine  # type: ignore[union-attr]
    first = await host.chat(ASK, Sampling(max_tokens=20, temperature=0))
    follow_up = [*USER, {"role": "assistant", "content": first.text}, *USER]
    fed = engine.prompt_tokens_fed
    again = await host.chat(Conversation.parse(follow_up), Sampling(max_tokens=5, temperature=0))
    # The first prompt's cells are reused; the answer is re-tokenized from text (" " + it),
    # so the cache may part from there.
    assert engine.prompt_tokens_fed - fed <= again.usage.prompt_tokens - first.usage.prompt_tokens
    cold = ModelHost(n_ctx=1024, parallel=1)  # the same answer without any cache
    await cold.load("a", host._swap.current.path)  # type: ignore[union-attr]
    try:
        assert (
            await cold.chat(Conversation.parse(follow_up), Sampling(max_tokens=5, temperature=0))
        ).text == again.text
    finally:
        await cold.close()
