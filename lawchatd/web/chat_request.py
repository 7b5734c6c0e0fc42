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
from lawchatd.modelhost.tools import written_calls
from lawchatd.web.structured import (
    Structure,
    ToolDef,
    json_schema_structure,
    tools_structure,
    with_system,
)

# Roles Llama-2 chat knows; OpenAI's newer "developer" role is its system prompt. A tool's
# result is told to the model as a user message (Llama-2 has no tool role), see _tool_result.
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


class SamplingRequest(BaseModel):
    """What chat and legacy completions share: the parameters with a type; `model_extra`
    holds the ones lawchatd does not know."""

    model_config = ConfigDict(extra="allow")
    model: StrictStr | None = None  # the loaded model answers; the reply names it
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: StrictStr | list[StrictStr] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream: StrictBool | None = False
    stream_options: _StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    # End-user identifiers, for abuse monitoring at OpenAI: nothing to do with the answer.
    user: StrictStr | None = None


class ChatRequest(SamplingRequest):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: _ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None


# Parameters lawchatd cannot honour, each with the values that ask for nothing (accepted).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
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
    "functions": "the deprecated functions are not supported; send tools",
    "function_call": "the deprecated function_call is not supported; send tool_choice",
    "store": "lawchatd stores no completions",
    "metadata": "lawchatd stores no completions",
    "modalities": "only text output is supported",
    "audio": "only text output is supported",
}


def _refuse(param: str, why: str, code: str = "unsupported_value") -> UserError:
    return UserError(f"{param}: {why}", param=param, code=code)


def _check_parameters(body: SamplingRequest, neutrals: dict[str, tuple[Any, ...]]) -> None:
    given = {**(body.model_extra or {}), "n": body.n}
    for name in given:
        if name not in neutrals:
            raise _refuse(
                name, "unrecognized request argument supplied", code="unsupported_parameter"
            )
    for name, neutral in neutrals.items():
        value = given.get(name)
        if not any(value == ok and type(value) is type(ok) for ok in neutral):
            raise _refuse(name, _WHY.get(name, "not supported by lawchatd"))
    if body.stream_options is not None and not body.stream:
        raise _refuse("stream_options", "only allowed when stream is true", code="invalid_value")
    if body.stream_options and body.stream_options.include_obfuscation:
        raise _refuse("stream_options.include_obfuscation", "lawchatd adds no obfuscation")
    response_format = getattr(body, "response_format", None)
    if response_format and response_format.type not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise _refuse("response_format", "type must be text, json_object or json_schema")
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


def _calls_of(i: int, raw: Any) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of an assistant message's tool_calls."""
    calls = []
    for j, call in enumerate(raw if isinstance(raw, list) else [None]):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            param = f"messages[{i}].tool_calls[{j}]"
            raise Unprocessable(f"{param}: a function call with a name is required", param=param)
        calls.append((str(call.get("id", "")), fn["name"], str(fn.get("arguments") or "{}")))
    return calls


def _tool_result(i: int, m: _Message, names: dict[str, str]) -> dict[str, str]:
    call_id = (m.model_extra or {}).get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    name = name or m.name or "a tool"
    return {"role": "user", "content": f"Result of the call to {name}:\n{_content(i, m)}"}


def messages_of(body: ChatRequest) -> list[dict[str, str]]:
    out = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    for i, m in enumerate(body.messages):
        extra = m.model_extra or {}
        if m.role == "tool":
            out.append(_tool_result(i, m, names))
            continue
        if m.role not in _ROLES:
            param = f"messages[{i}].role"
            why = f"must be one of system, developer, user, assistant, tool, not {m.role!r}"
            if m.role == "function":  # OpenAI's deprecated form
                raise _refuse(param, why)
            raise Unprocessable(f"{param}: {why}", param=param)
        for key in ("function_call", "audio"):
            if extra.get(key):
                raise _refuse(f"messages[{i}].{key}", "function_call and audio are not supported")
        if m.role == "assistant" and extra.get("tool_calls"):
            calls = _calls_of(i, extra["tool_calls"])
            names.update((call_id, name) for call_id, name, _ in calls)
            written = written_calls([(name, args) for _, name, args in calls])
            out.append({"role": "assistant", "content": written})
            continue
        out.append({"role": _ROLES[m.role], "content": _content(i, m)})
    return out


def structure_of(body: ChatRequest) -> Structure:
    """The grammar and prompt addition of tools or a json_schema (tools come first when
    both are sent and tool_choice is not "none")."""
    structure = tools_structure(body.tools, body.tool_choice, body.parallel_tool_calls)
    rf = body.response_format
    if structure.grammar is None and rf is not None and rf.type == "json_schema":
        return json_schema_structure(rf.model_dump())
    return structure


def prompt_messages(body: ChatRequest, structure: Structure) -> list[dict[str, str]]:
    return with_system(messages_of(body), structure)


def _max_tokens(body: SamplingRequest) -> int | None:
    a, b = body.max_tokens, getattr(body, "max_completion_tokens", None)
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


def _stops(body: SamplingRequest) -> tuple[str, ...]:
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())


def sampling_of(
    body: SamplingRequest,
    structure: Structure | None = None,
    neutrals: dict[str, tuple[Any, ...]] = _NEUTRAL,
) -> Sampling:
    """The `Sampling` the body asks for; raises a 400 for what lawchatd cannot honour
    (``neutrals``: the parameters known but not honoured, with the values that ask nothing)."""
    _check_parameters(body, neutrals)
    response_format = getattr(body, "response_format", None)
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
        json_object=response_format is not None and response_format.type == "json_object",
        grammar=structure.grammar if structure else None,
    )


def include_usage(body: SamplingRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)
