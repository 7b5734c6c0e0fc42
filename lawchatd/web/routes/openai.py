"""OpenAI's `/v1/models`, `/v1/models/{id}` and `/v1/chat/completions` (plain JSON, or
server-sent events with `stream: true`) over the model host, as the official SDKs call them.

The model host answers with plain data (`chat_types`); the OpenAI objects are built here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from lawchatd.errors import NotFound, Unprocessable, UserError
from lawchatd.modelhost import Conversation
from lawchatd.modelhost.chat_types import Chunk, Completion, Usage, gathered
from lawchatd.state.histograms import ChatTimings
from lawchatd.web.body import read_json
from lawchatd.web.chat_request import (
    ChatRequest,
    include_usage,
    prompt_messages,
    sampling_of,
    structure_of,
)
from lawchatd.web.keys import CHAT_TIMINGS, MODEL_HOST
from lawchatd.web.routes import usage
from lawchatd.web.sse import stream_events
from lawchatd.web.structured import Structure, finished, streamed

log = logging.getLogger(__name__)


def add_chat_routes(app: web.Application) -> None:
    app[CHAT_TIMINGS] = ChatTimings()  # the latency histograms /metrics shows
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.add_routes(usage.routes)  # GET /keys/usage: what each key spent of the model


def _model_object(request: web.Request) -> dict[str, Any] | None:
    snapshot = request.app[MODEL_HOST].snapshot()
    if snapshot.variant is None:  # also a model asleep (keep-alive): it answers
        return None
    return {
        "id": snapshot.variant,
        "object": "model",
        "created": int(snapshot.loaded_at.timestamp()) if snapshot.loaded_at else 0,
        "owned_by": "lawchatd",
        "n_ctx": snapshot.n_ctx,  # the context window, as llama.cpp's server reports it
    }


async def list_models(request: web.Request) -> web.Response:
    model = _model_object(request)
    return web.json_response({"object": "list", "data": [model] if model else []})


async def get_model(request: web.Request) -> web.Response:
    model = _model_object(request)
    wanted = request.match_info["model_id"]
    if model is None or model["id"] != wanted:
        raise NotFound(
            f"The model '{wanted}' is not loaded (GET /v1/models lists the one that is)",
            param="model",
            code="model_not_found",
        )
    return web.json_response(model)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    host = request.app[MODEL_HOST]
    body = await read_json(request, ChatRequest)
    structure = structure_of(body)  # json_schema or tools: a grammar, the tool list
    messages = prompt_messages(body, structure)
    sampling = sampling_of(body, structure)
    try:
        conversation = Conversation.parse(messages)  # the order of roles; types were checked
    except ValueError as exc:
        raise Unprocessable(str(exc), param="messages") from None
    # None while a swap unloads first: the host makes the request wait for the new model, and
    # raises NoModelLoaded itself when no model is loaded or loading.
    n_ctx = host.context_length
    if n_ctx is not None and sampling.max_tokens is not None and sampling.max_tokens > n_ctx:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise UserError(
            f"{param}: must be at most {n_ctx} (n_ctx)", param=param, code="invalid_value"
        )
    # The host's errors (no model, a full queue, a prompt too long...) answer for themselves.
    chunks = usage.answer_for(request, conversation, sampling, prompt=messages)
    if structure.tools:  # a tool call is known when the answer is whole
        chunks = _whole(chunks)
    if body.stream:
        with_usage = include_usage(body)
        return await stream_events(
            request, chunks, lambda first: _ChunkObjects(first.model_variant, with_usage, structure)
        )
    return web.json_response(_completion_object(await gathered(chunks), structure))


async def _whole(chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """The answer as one chunk (errors before the first token still come first)."""
    done = await gathered(chunks)
    yield Chunk(done.model_variant, done.text, done.finish_reason, done.usage)


# --- OpenAI objects -----------------------------------------------------------------------


def _head(kind: str, variant: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": variant,
        "system_fingerprint": None,
    }


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _completion_object(done: Completion, structure: Structure) -> dict[str, Any]:
    fields, reason = finished(done.text, done.finish_reason, structure)
    return {
        **_head("chat.completion", done.model_variant),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **fields, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
        ],
        "usage": _usage(done.usage),
    }


class _ChunkObjects:
    """chat.completion.chunk objects of one answer: one id, role first, usage last if asked."""

    def __init__(self, variant: str, with_usage: bool, structure: Structure) -> None:
        self.head = _head("chat.completion.chunk", variant)
        self.structure = structure
        self.text: list[str] = []  # a schema's answer is checked once whole
        if with_usage:
            self.head["usage"] = None  # every chunk but the last, as OpenAI sends it

    def start(self) -> list[dict[str, Any]]:
        return [self.delta({"role": "assistant", "content": ""})]

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "choices": [choice]}

    def of(self, chunk: Chunk) -> list[dict[str, Any]]:
        if self.structure.tools:  # one chunk: the whole answer
            fields, reason = finished(chunk.text, chunk.finish_reason or "stop", self.structure)
            out = [self.delta(d) for d in streamed(fields)]
        else:
            out = [self.delta({"content": chunk.text})] if chunk.text else []
            self.text.append(chunk.text)
            reason = chunk.finish_reason or "stop"
            if chunk.finish_reason is not None:  # raises if a schema's answer is not valid
                reason = finished("".join(self.text), reason, self.structure)[1]
        if chunk.finish_reason is not None:
            out.append(self.delta({}, reason))
            if "usage" in self.head and chunk.usage is not None:
                out.append({**self.head, "choices": [], "usage": _usage(chunk.usage)})
        return out
