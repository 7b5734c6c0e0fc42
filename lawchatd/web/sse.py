"""Server-sent events of a streamed answer, as OpenAI sends them: `data: {json}` events, an
error as a last event once the headers are out, then `data: [DONE]`. The OpenAI objects
come from the route (`Events`); this module only streams them."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from aiohttp import web

from lawchatd.errors import LawchatdError
from lawchatd.modelhost.chat_types import Chunk
from lawchatd.web.errors import as_error, openai_body

log = logging.getLogger(__name__)


class Events(Protocol):
    def start(self) -> list[dict[str, Any]]: ...  # before the first chunk's

    def of(self, chunk: Chunk) -> list[dict[str, Any]]: ...


async def stream_events(
    request: web.Request, chunks: AsyncIterator[Chunk], events_for: Callable[[Chunk], Events]
) -> web.StreamResponse:
    """Closing `chunks` (aclosing) stops generation when the client goes away, whether we
    notice it by a failed write or by the handler's cancellation."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        first = await anext(chunks)  # queue/model errors still become a JSON status here
        events = events_for(first)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not hold the tokens back
            }
        )
        await response.prepare(request)
        try:
            try:
                for obj in events.start() + events.of(first):
                    await send(response, obj)
                async for chunk in chunks:
                    for obj in events.of(chunk):
                        await send(response, obj)
            except ConnectionResetError:
                raise
            except Exception as exc:  # headers are out: tell the client in the stream
                known = isinstance(exc, LawchatdError)
                log.warning("answer stream failed: %s", exc, exc_info=not known)
                await send(response, {"error": openai_body(as_error(exc))})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            log.info("client went away; generation stopped")
    return response


async def send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
