"""OpenAI's legacy `POST /v1/completions` (prompt in, text out, streamed or not), and an
OpenAI-shaped answer for the /v1 routes lawchatd does not serve, rather than a bare 404.

The prompt is given to the model as it is, after the BOS token: no chat layout. Sampling
parameters and limits are the chat route's (`chat_request.sampling_of`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import Field, StrictStr

from lawchatd.errors import NotFound, UserError
from lawchatd.modelhost.chat_types import Chunk, Completion, gathered
from lawchatd.modelhost.prompt import Conversation
from lawchatd.web.body import read_json
from lawchatd.web.chat_request import SamplingRequest, include_usage, sampling_of
from lawchatd.web.routes import usage
from lawchatd.web.sse import stream_events

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this route

# Known parameters of /v1/completions, each with the values that ask for nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
}


class CompletionRequest(SamplingRequest):
    prompt: StrictStr | list[StrictStr] = Field(min_length=1)


def add_completion_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)


def add_not_served(app: web.Application) -> None:
    """Last of all: every other /v1 path answers that this server does not serve it."""
    app.router.add_route("*", "/v1/{tail:.*}", not_served)


async def not_served(request: web.Request) -> web.Response:
    for resource in request.app.router.resources():  # a served path, another method: 405
        if resource.canonical == "/v1/{tail}":
            continue
        match, allowed = await resource.resolve(request)
        if match is None and allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise NotFound(
        f"{request.method} {request.path} is not supported by this server: lawchatd serves "
        "/v1/chat/completions, /v1/completions, /v1/responses (text) and /v1/models only",
        code="unsupported_endpoint",
    )


def _prompt(body: CompletionRequest) -> str:
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) != 1:
        raise UserError(
            "prompt: one prompt per request is supported (send a string)",
            param="prompt",
            code="unsupported_value",
        )
    return body.prompt[0]


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, CompletionRequest)
    if body.max_tokens is None:
        body.max_tokens = DEFAULT_MAX_TOKENS
    sampling = sampling_of(body, neutrals=_NEUTRAL)
    conversation = Conversation((_prompt(body),))  # one turn: BOS, then the text as it is
    chunks = usage.answer_for(request, conversation, sampling, prompt=body.prompt)
    if body.stream:
        with_usage = include_usage(body)
        return await stream_events(
            request, chunks, lambda first: _TextChunks(first.model_variant, with_usage)
        )
    return web.json_response(_completion(await gathered(chunks)))


def _head(variant: str) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": variant,
        "system_fingerprint": None,
    }


def _choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def _usage(done: Completion | Chunk) -> dict[str, int]:
    assert done.usage is not None
    u = done.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _completion(done: Completion) -> dict[str, Any]:
    return {
        **_head(done.model_variant),
        "choices": [_choice(done.text, done.finish_reason)],
        "usage": _usage(done),
    }


class _TextChunks:
    def __init__(self, variant: str, with_usage: bool) -> None:
        self.head = _head(variant)
        self.with_usage = with_usage

    def start(self) -> list[dict[str, Any]]:
        return []

    def of(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = [{**self.head, "choices": [_choice(chunk.text, chunk.finish_reason)]}]
        if chunk.finish_reason is not None and self.with_usage:
            out.append({**self.head, "choices": [], "usage": _usage(chunk)})
        return out
