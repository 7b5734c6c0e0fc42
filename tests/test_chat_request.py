"""OpenAI request bodies read without a model: what is honoured, what is a 400 or a 422,
and the exact error shapes on `/v1`. (Stop strings are tested with the SDK, streamed and
not, in test_openai_clients.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lawchatd.modelhost import ModelHost
from lawchatd.modelhost.chat_types import Sampling
from lawchatd.web.chat_request import ChatRequest, messages_of, sampling_of
from lawchatd.web.errors import json_errors
from lawchatd.web.keys import MODEL_HOST
from lawchatd.web.routes.openai import add_chat_routes

USER = [{"role": "user", "content": "What is a tort?"}]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[json_errors])
    app[MODEL_HOST] = host = ModelHost(n_ctx=256, n_threads=None, n_gpu_layers=None)
    add_chat_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c
    await host.close()


def read(body: dict[str, Any]) -> tuple[list[dict[str, str]], Sampling]:
    request = ChatRequest.model_validate(body)
    return messages_of(request), sampling_of(request)


def test_every_honoured_parameter_reaches_the_sampling() -> None:
    messages, s = read(
        {
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "max_completion_tokens": 9,
            "temperature": 0.2,
            "top_p": 0.5,
            "stop": "\n\n",
            "seed": 3,
            "presence_penalty": 1.5,
            "frequency_penalty": -1,
            "logit_bias": {"42": -100, "7": 5},
            "response_format": {"type": "json_object"},
            "n": 1,
            "logprobs": False,
            "tool_choice": "none",
            "user": "clerk-7",
        }
    )
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
    ]
    assert s == Sampling(
        max_tokens=9,
        temperature=0.2,
        top_p=0.5,
        stop=("\n\n",),
        seed=3,
        presence_penalty=1.5,
        frequency_penalty=-1.0,
        logit_bias={42: -100.0, 7: 5.0},
        json_object=True,
    )
    assert read({"messages": USER})[1] == Sampling()  # absent: lawchatd's defaults


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 3}, "n", "unsupported_value"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_value"),
        ({"store": True}, "store", "unsupported_value"),
        ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
        ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_value"),
        ({"mirostat": 2}, "mirostat", "unsupported_parameter"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_value"),
        ({"logit_bias": {"token": 1}}, "logit_bias", "invalid_value"),
        (
            {"messages": [{"role": "function", "content": "x", "name": "f"}]},
            "messages[0].role",
            "unsupported_value",
        ),
        (
            {"messages": [{"role": "user", "content": None}]},
            "messages[0].content",
            "unsupported_value",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "integer", "maximum": 3}},
                }
            },
            "response_format.json_schema.schema",
            "unsupported_schema",
        ),
    ],
)
async def test_refusals_are_400s_naming_the_parameter(
    client: TestClient, extra: dict, param: str, code: str
) -> None:
    resp = await client.post("/v1/chat/completions", json={"messages": USER, **extra})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error" and param.split("[")[0] in error["message"]


async def test_error_shapes_on_v1(client: TestClient) -> None:
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 503 and resp.headers["x-should-retry"] == "false"
    assert await resp.json() == {
        "error": {
            "message": "No model is loaded",
            "type": "server_error",
            "param": None,
            "code": "model_not_loaded",
        }
    }
    resp = await client.get("/v1/nothing-here")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405 and (await resp.json())["error"]["type"] == "invalid_request_error"
    resp = await client.post(
        "/v1/chat/completions", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 422 and "JSON" in (await resp.json())["error"]["message"]
    part = {"role": "user", "content": [{"type": "text"}]}
    resp = await client.post("/v1/chat/completions", json={"messages": [part]})
    assert resp.status == 422
    assert (await resp.json())["error"]["param"] == "messages[0].content[0].text"
