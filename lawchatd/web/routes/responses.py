"""OpenAI's newer `POST /v1/responses`, for text: `input` (a string, or messages with text
parts) and `instructions` in, one output message out, not streamed. Sampling and limits are
the chat route's; `text.format` json_schema is enforced as response_format is on chat.

Anything else the Responses API offers (streaming events, tools, stored responses,
`previous_response_id`, reasoning) is a 400 that names it."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from lawchatd.errors import Unprocessable, UserError
from lawchatd.modelhost.chat_types import Completion, Sampling, gathered
from lawchatd.modelhost.prompt import Conversation
from lawchatd.web.body import read_json
from lawchatd.web.routes import usage
from lawchatd.web.structured import Structure, finished, json_schema_structure

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Known, accepted only with the values that ask for nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stream": (None, False),
    "store": (None, False),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "previous_response_id": (None,),
    "reasoning": (None,),
    "include": (None, []),
    "background": (None, False),
    "truncation": (None, "disabled"),
    "metadata": (None, {}),
    "user": None,  # any value: an end-user id, unused
    "safety_identifier": None,
    "prompt_cache_key": None,
    "service_tier": (None, "auto", "default"),
}


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: StrictStr | None = None
    type: StrictStr | None = None
    content: StrictStr | list[dict[str, Any]] | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr | None = None
    input: StrictStr | list[_Item]
    instructions: StrictStr | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    text: dict[str, Any] | None = None


def add_responses_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", responses)


def _check(body: ResponsesRequest) -> None:
    for name, value in (body.model_extra or {}).items():
        if name not in _NEUTRAL:
            raise UserError(
                f"{name}: unrecognized request argument supplied",
                param=name,
                code="unsupported_parameter",
            )
        allowed = _NEUTRAL[name]
        if allowed is not None and not any(value == ok for ok in allowed):
            raise UserError(
                f"{name}: not supported by lawchatd's /v1/responses (text in, text out, "
                "not streamed, nothing stored; /v1/chat/completions has streaming and tools)",
                param=name,
                code="unsupported_value",
            )


def _text(i: int, item: _Item) -> str:
    if isinstance(item.content, str):
        return item.content
    texts = []
    for j, part in enumerate(item.content or []):
        if part.get("type") not in ("input_text", "output_text", "text"):
            param = f"input[{i}].content[{j}].type"
            raise UserError(f"{param}: only text parts are supported", param=param)
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def _messages(body: ResponsesRequest) -> list[dict[str, str]]:
    out = [{"role": "system", "content": body.instructions}] if body.instructions else []
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        if item.role not in _ROLES or item.type not in (None, "message"):
            param = f"input[{i}]"
            raise UserError(f"{param}: only messages of text are supported", param=param)
        out.append({"role": _ROLES[item.role], "content": _text(i, item)})
    return out


def _structure(body: ResponsesRequest) -> Structure:
    fmt = (body.text or {}).get("format") or {"type": "text"}
    if fmt.get("type") == "text":
        return Structure()
    if fmt.get("type") != "json_schema":
        raise UserError("text.format: type must be text or json_schema", param="text.format")
    return json_schema_structure({"json_schema": fmt})


async def responses(request: web.Request) -> web.Response:
    body = await read_json(request, ResponsesRequest)
    _check(body)
    structure = _structure(body)
    default = Sampling()
    sampling = Sampling(
        max_tokens=body.max_output_tokens,
        temperature=default.temperature if body.temperature is None else body.temperature,
        top_p=default.top_p if body.top_p is None else body.top_p,
        grammar=structure.grammar,
    )
    messages = _messages(body)
    try:
        conversation = Conversation.parse(messages)
    except ValueError as exc:
        raise Unprocessable(str(exc), param="input") from None
    done = await gathered(usage.answer_for(request, conversation, sampling, prompt=messages))
    return web.json_response(_response_object(done, structure))


def _response_object(done: Completion, structure: Structure) -> dict[str, Any]:
    fields, reason = finished(done.text, done.finish_reason, structure)
    complete = reason == "stop"
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if complete else "incomplete",
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "error": None,
        "model": done.model_variant,
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed" if complete else "incomplete",
                "role": "assistant",
                "content": [{"type": "output_text", "text": fields["content"], "annotations": []}],
            }
        ],
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "usage": {
            "input_tokens": done.usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": done.usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": done.usage.total_tokens,
        },
    }
