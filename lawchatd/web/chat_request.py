"""An OpenAI chat request as lawchatd reads it: messages, a `Sampling`, stream options.

Every parameter of OpenAI's Chat Completions API is either honoured or refused with a 400
that names it; none is dropped silently. A body that is not well-typed is a 422 (lawchatd's
status for a malformed body), as everywhere else.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from lawchatd.errors import Unprocessable, UserError
from lawchatd.modelhost.chat_types import Sampling

# Roles Llama-2 chat knows; OpenAI's newer "developer" role is its system prompt.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class _Message(BaseModel):
    # `name` (a speaker's name) is accepted; Llama-2's prompt has no place for it.
    model_config = ConfigDict(extra="allow")
    role: StrictStr
    content: StrictStr | list[_Part] | None = None
    name: StrictStr | None = None


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None


Penalty = Annotated[float, Field(ge=-2, le=2)]


class ChatRequest(BaseModel):
    """The parameters with a type; `model_extra` holds the ones lawchatd does not know."""

    model_config = ConfigDict(extra="allow")
    messages: list[_Message] = Field(min_length=1)
    model: StrictStr | None = None  # the loaded model answers; the reply names it
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: StrictStr | list[StrictStr] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    response_format: _ResponseFormat | None = None
    stream: StrictBool | None = False
    stream_options: _StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    # End-user identifiers, for abuse monitoring at OpenAI: nothing to do with the answer.
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None


# Parameters lawchatd cannot honour, each with the values that ask for nothing (accepted).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),  # without tools there is nothing to call
    "functions": (None, []),
    "function_call": (None, "none"),
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),  # one tier here
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
}
_WHY = {
    "n": "only one choice per request is supported (send n=1 or leave it out)",
    "logprobs": "log probabilities are not supported",
    "top_logprobs": "log probabilities are not supported",
    "tools": "tool calls are not supported by this model",
    "tool_choice": "tool calls are not supported by this model",
    "functions": "function calls are not supported by this model",
    "function_call": "function calls are not supported by this model",
    "store": "lawchatd stores no completions",
    "metadata": "lawchatd stores no completions",
    "modalities": "only text output is supported",
    "audio": "only text output is supported",
}


def _refuse(param: str, why: str, code: str = "unsupported_value") -> UserError:
    return UserError(f"{param}: {why}", param=param, code=code)


def _check_parameters(body: ChatRequest) -> None:
    given = {**(body.model_extra or {}), "n": body.n}
    for name in given:
        if name not in _NEUTRAL:
            raise _refuse(
                name, "unrecognized request argument supplied", code="unsupported_parameter"
            )
    for name, neutral in _NEUTRAL.items():
        value = given.get(name)
        if not any(value == ok and type(value) is type(ok) for ok in neutral):
            raise _refuse(name, _WHY.get(name, "not supported by lawchatd"))
    if body.stream_options is not None and not body.stream:
        raise _refuse("stream_options", "only allowed when stream is true", code="invalid_value")
    if body.stream_options and body.stream_options.include_obfuscation:
        raise _refuse("stream_options.include_obfuscation", "lawchatd adds no obfuscation")
    if body.response_format and body.response_format.type not in ("text", "json_object"):
        raise _refuse(
            "response_format", "only {'type': 'text'} and {'type': 'json_object'} are supported"
        )
    stops = _stops(body)
    if len(stops) > 4 or "" in stops:
        raise _refuse("stop", "up to 4 non-empty strings", code="invalid_value")


def _content(i: int, m: _Message) -> str:
    if isinstance(m.content, str):
        return m.content
    if m.content is None:
        raise _refuse(f"messages[{i}].content", "a string or a list of text parts is required")
    texts = []
    for j, part in enumerate(m.content):
        if part.type == "text" and part.text is None:
            param = f"messages[{i}].content[{j}].text"
            raise Unprocessable(f"{param}: a string is required", param=param)
        if part.type != "text":
            raise _refuse(
                f"messages[{i}].content[{j}].type",
                f"only text parts are supported, not {part.type!r} (this model reads text only)",
            )
        texts.append(part.text)
    return "\n".join(texts)


def messages_of(body: ChatRequest) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(body.messages):
        if m.role not in _ROLES:
            param = f"messages[{i}].role"
            why = f"must be one of system, developer, user, assistant, not {m.role!r}"
            if m.role in ("tool", "function"):  # OpenAI's, but no tools here
                raise _refuse(param, why)
            raise Unprocessable(f"{param}: {why}", param=param)
        for extra in m.model_extra or {}:
            if extra in ("tool_calls", "function_call", "audio") and m.model_extra[extra]:
                raise _refuse(f"messages[{i}].{extra}", "tool and audio messages are not supported")
        out.append({"role": _ROLES[m.role], "content": _content(i, m)})
    return out


def _max_tokens(body: ChatRequest) -> int | None:
    a, b = body.max_tokens, body.max_completion_tokens
    if a is not None and b is not None and a != b:
        raise _refuse(
            "max_completion_tokens", "differs from max_tokens; send one of them", "invalid_value"
        )
    return b if b is not None else a


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    bias = {}
    for key, value in (raw or {}).items():
        if not key.isdecimal():
            raise _refuse("logit_bias", f"keys are token ids, not {key!r}", "invalid_value")
        bias[int(key)] = value
    return bias


def _stops(body: ChatRequest) -> tuple[str, ...]:
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())


def sampling_of(body: ChatRequest) -> Sampling:
    """The `Sampling` the body asks for; raises a 400 for what lawchatd cannot honour."""
    _check_parameters(body)
    default = Sampling()
    return Sampling(
        max_tokens=_max_tokens(body),
        temperature=default.temperature if body.temperature is None else body.temperature,
        top_p=default.top_p if body.top_p is None else body.top_p,
        stop=_stops(body),
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=_logit_bias(body.logit_bias),
        json_object=body.response_format is not None and body.response_format.type == "json_object",
    )


def include_usage(body: ChatRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)
