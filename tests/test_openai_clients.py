"""The official `openai` SDK and `langchain-openai` against the daemon, as firms call them.

One daemon for the module (a tiny real llama model, copied in as if downloaded, loaded by
POST /models/load); the clients are the real ones, synchronous, over loopback. The tiny
model's vocabulary is bytes and it writes printable ASCII only, so one token is one
character: `len(content)` checks the token count from outside, beside `usage`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from openai import OpenAI

from lawchatd.testing.daemon import API_KEY, Daemon, loaded_daemon
from lawchatd.testing.models import ModelFile

VARIANT = "tiny-small"
ASK = [{"role": "user", "content": "What is a tort?"}]
E4 = 3 + 0xE4  # token id of the byte 0xE4: the start of a 3-byte UTF-8 character


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, hub_root: Path, models: dict[str, ModelFile]
) -> Iterator[Daemon]:
    with loaded_daemon(tmp_path_factory.mktemp("data"), hub_root, models, VARIANT) as served:
        yield served


def load(daemon: Daemon) -> None:
    reply = httpx.post(
        f"{daemon.url}/models/load",
        json={"model_variant": VARIANT},
        headers=daemon.headers(),
        timeout=30,
    )
    assert reply.status_code == 200 and reply.json()["loaded"] is True, reply.text


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> OpenAI:
    return OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0, timeout=30)


def ask(client: OpenAI, **kwargs):
    return client.chat.completions.create(model=VARIANT, messages=ASK, **kwargs)


# --- limits and usage ---------------------------------------------------------------------


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_token_limit_is_exact(client: OpenAI, param: str) -> None:
    answer = ask(client, temperature=0, **{param: 16})
    choice = answer.choices[0]
    assert choice.finish_reason == "length" and len(choice.message.content) == 16
    assert answer.usage.completion_tokens == 16
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 16
    assert answer.model == VARIANT and answer.object == "chat.completion"


def test_unfinished_utf8_does_not_run_past_the_limit(client: OpenAI) -> None:
    # Every token is 0xE4, a character that never ends: llama-cpp used to go on waiting for
    # its end. Now 16 tokens are 16 tokens, and no broken byte reaches the JSON.
    for stream in (False, True):
        kwargs = {"max_tokens": 16, "logit_bias": {str(E4): 100}, "temperature": 0}
        if stream:
            chunks = list(
                ask(client, stream=True, stream_options={"include_usage": True}, **kwargs)
            )
            usage, text = chunks[-1].usage, "".join(content(chunks))
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            answer = ask(client, **kwargs)
            usage, text = answer.usage, answer.choices[0].message.content
            finish = answer.choices[0].finish_reason
        assert usage.completion_tokens == 16 and finish == "length"
        assert text.strip("\ufffd") == ""  # broken bytes: dropped, or U+FFFD each


def content(chunks) -> list[str]:
    return [c.choices[0].delta.content or "" for c in chunks if c.choices]


def test_stream_with_usage_matches_the_whole_answer(client: OpenAI) -> None:
    whole = ask(client, max_tokens=12, temperature=0)
    chunks = list(
        ask(
            client,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(content(chunks)) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert len({c.id for c in chunks}) == 1

    plain = list(ask(client, max_tokens=4, stream=True))  # no usage unless asked for
    assert all(getattr(c, "usage", None) is None for c in plain)


# --- messages -----------------------------------------------------------------------------


def test_content_as_text_parts(client: OpenAI) -> None:
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "a tort?"}]
    answer = client.chat.completions.create(
        model=VARIANT,
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": parts},
        ],
        max_tokens=4,
    )
    assert answer.usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError, match="only text parts"):
        client.chat.completions.create(
            model=VARIANT,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                }
            ],
        )


# --- sampling parameters ------------------------------------------------------------------


def test_seed_repeats_an_answer(client: OpenAI) -> None:
    first = ask(client, max_tokens=16, temperature=1.0, seed=7).choices[0].message.content
    again = ask(client, max_tokens=16, temperature=1.0, seed=7).choices[0].message.content
    other = ask(client, max_tokens=16, temperature=1.0, seed=8).choices[0].message.content
    assert first == again and first != other


def test_stop_strings(client: OpenAI) -> None:
    text = ask(client, max_tokens=16, temperature=0).choices[0].message.content
    stop = text[5:7]
    for stream in (False, True):
        if stream:
            chunks = list(ask(client, max_tokens=16, temperature=0, stop=[stop], stream=True))
            got, finish = "".join(content(chunks)), chunks[-1].choices[0].finish_reason
        else:
            answer = ask(client, max_tokens=16, temperature=0, stop=stop)
            got, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
        assert (got, finish) == (text[: text.index(stop)], "stop")


def test_logit_bias_and_penalties_change_the_answer(client: OpenAI) -> None:
    greedy = ask(client, max_tokens=24, temperature=0).choices[0].message.content
    top = max(set(greedy), key=greedy.count)
    banned = ask(client, max_tokens=24, temperature=0, logit_bias={str(3 + ord(top)): -100})
    assert top not in banned.choices[0].message.content
    forced = ask(client, max_tokens=8, temperature=0, logit_bias={str(3 + ord("q")): 100})
    assert forced.choices[0].message.content == "q" * 8
    for penalty in ("presence_penalty", "frequency_penalty"):
        changed = ask(client, max_tokens=24, temperature=0, **{penalty: 2.0})
        assert changed.choices[0].message.content != greedy, penalty


def test_json_object_response_format(client: OpenAI) -> None:
    # The bias makes the model want "}" above all: alone it writes "}}}}...", under the
    # JSON grammar it can only open an object first, and end once that object is closed.
    brace = {str(3 + ord("}")): 100}
    plain = ask(client, max_tokens=8, temperature=0, logit_bias=brace)
    assert plain.choices[0].message.content == "}" * 8
    answer = ask(
        client,
        max_tokens=100,
        temperature=0,
        logit_bias=brace,
        response_format={"type": "json_object"},
    )
    assert answer.choices[0].finish_reason == "stop"
    assert json.loads(answer.choices[0].message.content) == {}
    free = ask(
        client, max_tokens=40, temperature=1, seed=3, response_format={"type": "json_object"}
    )
    assert free.choices[0].message.content.startswith("{")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": 2}, "only one choice"),
        ({"logprobs": True}, "log probabilities"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "number", "minimum": 0}},
                }
            },
            "'minimum'",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "array", "uniqueItems": True},
                        },
                    }
                ]
            },
            "'uniqueItems'",
        ),
        ({"extra_body": {"top_k": 5}}, "unrecognized request argument"),
        ({"logit_bias": {"999999": 1}}, "vocabulary"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "differs"),
        ({"max_tokens": 100_000}, "n_ctx"),
        ({"max_tokens": 250}, "context window holds 256"),  # prompt + 250 > n_ctx
    ],
)
def test_what_cannot_be_honoured_is_a_400_in_words(client: OpenAI, kwargs: dict, words: str):
    with pytest.raises(openai.BadRequestError, match=words) as caught:
        ask(client, **kwargs)
    assert caught.value.body["type"] == "invalid_request_error"


# --- models and errors --------------------------------------------------------------------


def test_models_list_and_retrieve(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [VARIANT]
    model = client.models.retrieve(VARIANT)
    assert model.id == VARIANT and model.owned_by == "lawchatd"
    with pytest.raises(openai.NotFoundError, match="not loaded") as caught:
        client.models.retrieve("tiny-b")
    assert caught.value.code == "model_not_found"


def test_errors_carry_messages(daemon: Daemon, client: OpenAI) -> None:
    wrong = OpenAI(base_url=f"{daemon.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Invalid or missing API key"):
        wrong.models.list()
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        ask(client, temperature=5)

    reply = httpx.post(
        f"{daemon.url}/models/unload",
        params={"model_variant": VARIANT},
        headers=daemon.headers(),
        timeout=30,
    )
    assert reply.json()["status"] == "unloaded"
    try:
        retrying = client.with_options(max_retries=2)  # told not to retry: fails at once
        with pytest.raises(openai.InternalServerError, match="No model is loaded") as caught:
            ask(retrying, max_tokens=4)
        assert caught.value.status_code == 503 and caught.value.code == "model_not_loaded"
        assert caught.value.response.headers["x-should-retry"] == "false"
    finally:
        load(daemon)


# --- LangChain ----------------------------------------------------------------------------


def test_langchain_invoke_and_stream(daemon: Daemon) -> None:
    llm = ChatOpenAI(
        base_url=f"{daemon.url}/v1",
        api_key=API_KEY,
        model=VARIANT,
        max_tokens=8,  # sent as max_completion_tokens
        temperature=0,
        max_retries=0,
    )
    answer = llm.invoke("What is a tort?")
    assert len(answer.content) == 8 and answer.usage_metadata["output_tokens"] == 8
    assert answer.response_metadata["finish_reason"] == "length"

    chunks = list(llm.stream("What is a tort?", stream_usage=True))
    assert "".join(c.content for c in chunks) == answer.content
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 8
