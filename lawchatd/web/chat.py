"""The chat API over the model host: `/models/loaded`, OpenAI's `/v1/models` and
`/v1/chat/completions` (plain JSON, or server-sent events with `stream: true`)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from lawchatd.chat_types import Chunk, Completion, Sampling
from lawchatd.modelhost import (
    ModelHostError,
    ModelWaitTimeout,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
)
from lawchatd.prompt import llama2_turns
from lawchatd.web.errors import error, read_json
from lawchatd.web.keys import MODEL_HOST

log = logging.getLogger(__name__)


_STATUS_OF: list[tuple[type[ModelHostError], int]] = [
    (NoModelLoaded, 503),
    (QueueFull, 429),
    (PromptTooLong, 400),
]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(BaseModel):
    """OpenAI's fields that mean something here; others (`model`, `n`, ...) are ignored:
    the loaded model answers. Defaults are llama-cpp-python's server's."""

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    response_format: dict[str, Any] | None = None
    stream: StrictBool = False

    def sampling(self) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        kind = (self.response_format or {}).get("type", "text")
        if kind not in ("text", "json_object"):
            raise error(400, f"response_format.type {kind!r} is not supported (json_object is)")
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): max(-100.0, min(100.0, v)) for k, v in self.logit_bias.items()},
            json_object=kind == "json_object",
        )

    def message_dicts(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]


def add_chat_routes(app: web.Application) -> None:
    app.router.add_get("/models/loaded", get_loaded)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)


async def get_loaded(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODEL_HOST].status())


async def list_models(request: web.Request) -> web.Response:
    host = request.app[MODEL_HOST]
    status = host.status()
    data = []
    if status["model_variant"] is not None:
        data.append(
            {
                "id": status["model_variant"],
                "object": "model",
                "created": host.loaded_timestamp,
                "owned_by": "lawchatd",
                "n_ctx": status["n_ctx"],
            }
        )
    return web.json_response({"object": "list", "data": data})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    host = request.app[MODEL_HOST]
    body = await read_json(request, ChatRequest)
    messages = body.message_dicts()
    try:
        llama2_turns(messages)  # order of roles; the types were checked above
    except ValueError as exc:
        raise error(422, str(exc)) from None
    n_ctx = host.context_length  # None while a swap unloads first: the host waits then
    if n_ctx is not None and body.max_tokens is not None and body.max_tokens > n_ctx:
        raise error(422, f"max_tokens: must be at most {n_ctx} (n_ctx)")
    sampling = body.sampling()
    try:
        if body.stream:
            return await _sse(request, _openai_chunks(host.chat_stream(messages, sampling)))
        return web.json_response(_openai_completion(await host.chat(messages, sampling)))
    except ModelHostError as exc:
        raise _http_error(exc) from None
    except ValueError as exc:  # e.g. a logit_bias token outside the vocabulary
        raise error(400, str(exc)) from None


def _http_error(exc: ModelHostError) -> web.HTTPException:
    if isinstance(exc, ModelWaitTimeout):
        http = error(503, str(exc))
        http.headers["Retry-After"] = str(exc.retry_after)
        return http
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return error(status, str(exc))
    return error(500, str(exc))


def _head(kind: str, variant: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": variant,
    }


def _usage(c: Completion | Chunk) -> dict[str, int]:
    assert c.usage is not None
    u = c.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def _openai_completion(c: Completion) -> dict[str, Any]:
    return {
        **_head("chat.completion", c.model_variant),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
            }
        ],
        "usage": _usage(c),
    }


async def _openai_chunks(chunks: AsyncIterator[Chunk]) -> AsyncIterator[dict[str, Any]]:
    """chat.completion.chunk objects: the role, content deltas, finish_reason (with usage).
    Closing this closes ``chunks``, which cancels the request in the model host."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        head: dict[str, Any] | None = None
        async for chunk in chunks:
            if head is None:
                head = _head("chat.completion.chunk", chunk.model_variant)
                yield {**head, "choices": [_choice({"role": "assistant", "content": ""})]}
            if chunk.text:
                yield {**head, "choices": [_choice({"content": chunk.text})]}
            if chunk.finish_reason is not None:
                yield {
                    **head,
                    "choices": [_choice({}, chunk.finish_reason)],
                    "usage": _usage(chunk),
                }


def _choice(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason}


async def _sse(request: web.Request, chunks: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    """Server-sent events; closing `chunks` (aclosing) stops generation when the client
    goes away, whether we notice it by a failed write or by the handler's cancellation."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        first = await anext(chunks)  # queue/model errors still become a JSON status here
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold the tokens back
            }
        )
        await response.prepare(request)
        try:
            await _send(response, first)
            try:
                async for chunk in chunks:
                    await _send(response, chunk)
            except ConnectionResetError:
                raise
            except Exception as exc:  # headers are out: tell the client in the stream
                log.warning(
                    "chat stream failed: %s", exc, exc_info=not isinstance(exc, ModelHostError)
                )
                await _send(response, {"error": {"message": str(exc), "type": "server_error"}})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            log.info("chat client went away; generation stopped")
    return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
