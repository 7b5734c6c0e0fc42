"""OpenAI's `/v1/models`, `/v1/models/{id}` and `/v1/chat/completions` (plain JSON, or
server-sent events with `stream: true`) over the model host, as the official SDKs call them.

The model host answers with plain data (`chat_types`); the OpenAI objects are built here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from lawchatd.errors import LawchatdError, NotFound, Unprocessable, UserError
from lawchatd.modelhost import Conversation
from lawchatd.modelhost.chat_types import Chunk, Completion, Usage, gathered
from lawchatd.state.histograms import ChatTimings
from lawchatd.web.auditing import watch_chat
from lawchatd.web.body import read_json
from lawchatd.web.caller import caller_of
from lawchatd.web.chat_request import ChatRequest, include_usage, messages_of, sampling_of
from lawchatd.web.errors import as_error, openai_body
from lawchatd.web.keys import CHAT_TIMINGS, MODEL_HOST
from lawchatd.web.routes import usage

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
    messages = messages_of(body)
    sampling = sampling_of(body)
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
    caller = caller_of(request)  # slots are shared between keys; each is held to its limits
    limits = usage.limits_for(request.app, caller)
    stream = host.chat_stream(conversation, sampling, caller.name, limits)
    chunks = request.app[CHAT_TIMINGS].observe(stream)
    chunks = watch_chat(request, chunks, prompt=messages)  # the audit trail's record
    if body.stream:
        return await _sse(request, chunks, include_usage(body))
    return web.json_response(_completion_object(await gathered(chunks)))


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


def _completion_object(done: Completion) -> dict[str, Any]:
    return {
        **_head("chat.completion", done.model_variant),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.text, "refusal": None},
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }
        ],
        "usage": _usage(done.usage),
    }


class _ChunkObjects:
    """chat.completion.chunk objects of one answer: one id, role first, usage last if asked."""

    def __init__(self, variant: str, with_usage: bool) -> None:
        self.head = _head("chat.completion.chunk", variant)
        if with_usage:
            self.head["usage"] = None  # every chunk but the last, as OpenAI sends it

    def delta(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "choices": [choice]}

    def of(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = [self.delta({"content": chunk.text})] if chunk.text else []
        if chunk.finish_reason is not None:
            out.append(self.delta({}, chunk.finish_reason))
            if "usage" in self.head and chunk.usage is not None:
                out.append({**self.head, "choices": [], "usage": _usage(chunk.usage)})
        return out


async def _sse(
    request: web.Request, chunks: AsyncIterator[Chunk], with_usage: bool
) -> web.StreamResponse:
    """Server-sent events; closing `chunks` (aclosing) stops generation when the client
    goes away, whether we notice it by a failed write or by the handler's cancellation."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        first = await anext(chunks)  # queue/model errors still become a JSON status here
        objects = _ChunkObjects(first.model_variant, with_usage)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold the tokens back
            }
        )
        await response.prepare(request)
        try:
            await _send(response, objects.delta({"role": "assistant", "content": ""}))
            try:
                for obj in objects.of(first):
                    await _send(response, obj)
                async for chunk in chunks:
                    for obj in objects.of(chunk):
                        await _send(response, obj)
            except ConnectionResetError:
                raise
            except Exception as exc:  # headers are out: tell the client in the stream
                known = isinstance(exc, LawchatdError)
                log.warning("chat stream failed: %s", exc, exc_info=not known)
                await _send(response, {"error": openai_body(as_error(exc))})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            log.info("chat client went away; generation stopped")
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
