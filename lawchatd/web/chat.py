"""The chat API over the model host: `/models/loaded`, OpenAI's `/v1/models` and
`/v1/chat/completions` (plain JSON, or server-sent events with `stream: true`)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from lawchatd.modelhost import (
    ModelHostError,
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
    stream: StrictBool = False

    def chat_args(self) -> dict[str, Any]:
        return self.model_dump(include={"max_tokens", "temperature", "top_p", "stop", "seed"})

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
    if host.context_length is None:
        raise error(503, "No model is loaded")
    if body.max_tokens is not None and body.max_tokens > host.context_length:
        raise error(422, f"max_tokens: must be at most {host.context_length} (n_ctx)")
    try:
        if body.stream:
            return await _sse(request, host.chat_stream(messages, **body.chat_args()))
        return web.json_response(await host.chat(messages, **body.chat_args()))
    except ModelHostError as exc:
        raise _http_error(exc) from None


def _http_error(exc: ModelHostError) -> web.HTTPException:
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return error(status, str(exc))
    return error(500, str(exc))


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
