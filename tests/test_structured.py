"""Structured answers and tools on /v1 through the real clients (openai, LangChain,
litellm) against a daemon serving the tiny model.

The tiny model's words are random, so the assertions are about what the grammar guarantees:
answers valid against their schema, tool calls with valid arguments, OpenAI's wire shapes.
Strings in the schemas have a maxLength, so every answer ends well within max_tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import jsonschema
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from openai import OpenAI
from pydantic import BaseModel, Field

from lawchatd.testing.daemon import API_KEY, Daemon, loaded_daemon
from lawchatd.testing.models import ModelFile

VARIANT = "tiny-small"
N_CTX = 2048  # the tool list is in the prompt, and the tiny model's tokens are bytes
ASK = [{"role": "user", "content": "Who are the parties?"}]


class Party(BaseModel):
    """A party to a contract."""

    name: str = Field(max_length=8)
    role: Literal["buyer", "seller"]
    share: int


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, hub_root: Path, models: dict[str, ModelFile]
) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("data")
    with loaded_daemon(data, hub_root, models, VARIANT, LAWCHATD_N_CTX=str(N_CTX)) as served:
        yield served


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> OpenAI:
    return OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def chat_model(daemon: Daemon, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{daemon.url}/v1", api_key=API_KEY, model=VARIANT, max_retries=0, **kwargs
    )


def assert_valid_calls(calls) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])


# --- response_format: json_schema ---------------------------------------------------------


def test_openai_parse_gives_a_valid_record(client: OpenAI) -> None:
    answer = client.chat.completions.parse(
        model=VARIANT, messages=ASK, response_format=Party, max_tokens=200, seed=1
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Party)
    jsonschema.validate(json.loads(choice.message.content), Party.model_json_schema())


def test_json_schema_streamed(client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    stream = client.chat.completions.create(
        model=VARIANT,
        messages=ASK,
        max_tokens=50,
        stream=True,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "flag", "schema": schema, "strict": True},
        },
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(json.loads(text)["ok"], bool)


def test_langchain_with_structured_output_default_and_raw(daemon: Daemon) -> None:
    model = chat_model(daemon, max_tokens=200, seed=2)
    party = model.with_structured_output(Party).invoke("Who sells?")
    assert isinstance(party, Party)
    raw = model.with_structured_output(Party, include_raw=True).invoke("Who buys?")
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Party)


def test_a_schema_the_grammar_cannot_enforce_is_refused(client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 18}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=VARIANT,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
    error = caught.value.body
    assert error["code"] == "unsupported_schema" and "minimum" in error["message"]
    assert error["param"] == "response_format.json_schema.schema"


# --- tools ----------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_tool_calls_have_valid_arguments(client: OpenAI, choice) -> None:
    answer = client.chat.completions.create(
        model=VARIANT,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice=choice,
        parallel_tool_calls=False,
        max_tokens=120,
        seed=3,
    )
    choice_ = answer.choices[0]
    assert choice_.finish_reason == "tool_calls" and choice_.message.content is None
    assert len(choice_.message.tool_calls) == 1
    assert_valid_calls(choice_.message.tool_calls)
    if isinstance(choice, dict):
        assert choice_.message.tool_calls[0].function.name == "add"


def test_auto_answers_or_calls(client: OpenAI) -> None:
    for seed in range(3):
        answer = client.chat.completions.create(
            model=VARIANT, messages=ASK, tools=[ADD], max_tokens=60, seed=seed
        )
        choice = answer.choices[0]
        if choice.finish_reason == "tool_calls":
            assert_valid_calls(choice.message.tool_calls)
        else:
            assert choice.finish_reason in ("stop", "length")
            assert isinstance(choice.message.content, str) and not choice.message.tool_calls


def test_streamed_tool_calls_are_assembled_by_the_sdk(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=VARIANT,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice="required",
        parallel_tool_calls=False,  # the random model may call on past max_tokens otherwise
        max_tokens=200,
        seed=4,
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls)


def test_langchain_bind_tools_loop_of_two_turns(daemon: Daemon) -> None:
    model = chat_model(daemon, max_tokens=120, seed=5).bind_tools(
        [ADD], tool_choice="add", parallel_tool_calls=False
    )
    history = [HumanMessage("What is 2 + 3?")]
    first = model.invoke(history)
    assert first.tool_calls and first.tool_calls[0]["name"] == "add"
    jsonschema.validate(first.tool_calls[0]["args"], SCHEMAS["add"])
    history += [first, ToolMessage("5", tool_call_id=first.tool_calls[0]["id"])]
    second = chat_model(daemon, max_tokens=20, seed=6).invoke(history)
    assert isinstance(second.content, str)


def test_litellm_with_tools(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the Internet
    litellm = pytest.importorskip("litellm")
    answer = litellm.completion(
        model=f"openai/{VARIANT}",
        api_base=f"{daemon.url}/v1",
        api_key=API_KEY,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        seed=7,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls)


def test_unknown_tool_choice_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=VARIANT,
            messages=ASK,
            tools=[ADD],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert caught.value.body["param"] == "tool_choice"


# --- /v1/completions, routes not served, the context window ---------------------------------


def test_legacy_completions_plain_and_streamed(client: OpenAI) -> None:
    done = client.completions.create(model=VARIANT, prompt="The court held", max_tokens=8, seed=1)
    assert done.object == "text_completion" and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 8 and len(done.choices[0].text) == 8
    default = client.completions.create(model=VARIANT, prompt="The court held", temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens
    stream = client.completions.create(
        model=VARIANT,
        prompt="The court held",
        max_tokens=8,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.embeddings.create(model=VARIANT, input="a tort"),
        lambda c: c.audio.speech.create(model=VARIANT, voice="alloy", input="a tort"),
        lambda c: c.images.generate(prompt="a court"),
        lambda c: c.files.list(),
    ],
    ids=["embeddings", "audio", "images", "files"],
)
def test_routes_not_served_say_so(client: OpenAI, call) -> None:
    with pytest.raises(openai.NotFoundError, match="not supported by this server") as caught:
        call(client)
    assert caught.value.body["code"] == "unsupported_endpoint"


def test_prompt_plus_max_tokens_past_the_context_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=f"context window holds {N_CTX}") as caught:
        client.chat.completions.create(model=VARIANT, messages=ASK, max_tokens=N_CTX - 4)
    assert caught.value.body["code"] == "context_length_exceeded"
    # Without max_tokens, the answer may take all the room there is.
    answer = client.chat.completions.create(
        model=VARIANT, messages=ASK, logit_bias={"2": -100}, temperature=0
    )
    assert answer.usage.total_tokens <= N_CTX


def test_responses_for_text(client: OpenAI) -> None:
    cut = client.responses.create(
        model=VARIANT, input="What is a tort?", instructions="Be brief.", max_output_tokens=8
    )
    assert cut.status == "incomplete" and len(cut.output_text) == 8
    assert cut.usage.output_tokens == 8 and cut.incomplete_details.reason == "max_output_tokens"
    parsed = client.responses.parse(
        model=VARIANT, input=[{"role": "user", "content": "Who sells?"}], text_format=Party
    )
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Party)
    with pytest.raises(openai.BadRequestError, match="not streamed"):
        client.responses.create(model=VARIANT, input="x", stream=True)
