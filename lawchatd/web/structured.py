"""Structured answers on /v1: `response_format` json_schema and `tools`, read from a chat
request and turned into a grammar, a system prompt addition and, at the end, OpenAI's
message (content checked against the schema, or `tool_calls`).

The model host only sees a grammar (`Sampling.grammar`) and the messages; everything about
OpenAI's wire shapes is here and in routes/openai.py.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from lawchatd.errors import UserError
from lawchatd.modelhost.errors import ModelHostError
from lawchatd.modelhost.grammar import UnsupportedSchema, schema_grammar, violation
from lawchatd.modelhost.tools import Call, Tool, check_tool, parse_answer, tool_grammar, tool_prompt


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    function: FunctionDef | None = None


@dataclass(frozen=True)
class Structure:
    """What shapes one answer. Nothing set: plain text."""

    grammar: str | None = None
    schema: dict[str, Any] | None = None  # json_schema: the answer is checked against it
    tools: tuple[Tool, ...] = ()  # the answer is tool calls, or {"response": ...} under auto
    system: str | None = None  # added to the system prompt (the tool list)


def _refused(param: str, why: str, code: str = "invalid_value") -> UserError:
    return UserError(f"{param}: {why}", param=param, code=code)


def _unsupported(param: str, exc: UnsupportedSchema) -> UserError:
    return UserError(
        f"{param}: this schema cannot be enforced by lawchatd: {exc} "
        f"(unsupported keyword: {exc.keyword})",
        param=param,
        code="unsupported_schema",
    )


def json_schema_structure(response_format: dict[str, Any]) -> Structure:
    spec = response_format.get("json_schema")
    param = "response_format.json_schema"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _refused(param, "an object with a name and a schema is required")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise _refused(f"{param}.schema", "must be a JSON Schema object")
    try:
        grammar = schema_grammar(schema)
    except UnsupportedSchema as exc:
        raise _unsupported(f"{param}.schema", exc) from None
    return Structure(grammar=grammar, schema=schema)


def _tools(defs: list[ToolDef]) -> list[Tool]:
    tools = []
    for i, d in enumerate(defs):
        if d.type != "function" or d.function is None:
            raise _refused(f"tools[{i}].type", f"only function tools are supported, not {d.type!r}")
        params = d.function.parameters or {"type": "object", "properties": {}}
        tool = Tool(d.function.name, d.function.description or "", params)
        try:
            check_tool(tool)
        except UnsupportedSchema as exc:
            raise _unsupported(f"tools[{i}].function.parameters", exc) from None
        tools.append(tool)
    return tools


def _choice(raw: Any, tools: list[Tool]) -> str:
    if raw is None:
        return "auto"
    if raw in ("auto", "none", "required"):
        return raw
    name = raw.get("function", {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or (isinstance(raw, dict) and raw.get("type") != "function"):
        why = 'must be "none", "auto", "required" or {"type": "function", "function": {"name"}}'
        raise _refused("tool_choice", why)
    if name not in {t.name for t in tools}:
        raise _refused("tool_choice", f"names {name!r}, which is not among the tools")
    return name


def tools_structure(
    defs: list[ToolDef] | None, raw_choice: Any, parallel: bool | None
) -> Structure:
    if not defs:
        if raw_choice not in (None, "none"):
            raise _refused("tool_choice", "is only allowed when tools are given")
        return Structure()
    tools = _tools(defs)
    choice = _choice(raw_choice, tools)
    if choice == "none":
        return Structure()
    parallel = True if parallel is None else parallel
    try:
        grammar = tool_grammar(tools, choice, parallel)
    except UnsupportedSchema as exc:
        raise _unsupported("tools", exc) from None
    return Structure(
        grammar=grammar, tools=tuple(tools), system=tool_prompt(tools, choice, parallel)
    )


def with_system(messages: list[dict[str, str]], structure: Structure) -> list[dict[str, str]]:
    """The messages with the structure's system text after the leading system messages."""
    if not structure.system:
        return messages
    n_sys = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    return [*messages[:n_sys], {"role": "system", "content": structure.system}, *messages[n_sys:]]


# --- the answer -------------------------------------------------------------------------


def _tool_call(call: Call, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
    out["function"] = {"name": call.name, "arguments": call.arguments}
    return out if index is None else {"index": index, **out}


def finished(text: str, reason: str, structure: Structure) -> tuple[dict[str, Any], str]:
    """(the message's content / tool_calls fields, finish_reason) of a whole answer.

    A grammar makes every answer that ends by itself valid; one that does not validate is a
    bug and fails loudly (500) rather than reach a program that trusts it. An answer cut by
    max_tokens comes back as it is, with finish_reason "length", as at OpenAI."""
    if reason != "stop" or (structure.schema is None and not structure.tools):
        return {"content": text}, reason
    try:
        data = json.loads(text)
    except ValueError:
        raise ModelHostError("the model's answer is not the JSON its grammar allows") from None
    if structure.schema is not None:
        why = violation(data, structure.schema)
        if why:
            raise ModelHostError(f"the model's answer does not match the schema: {why}")
        return {"content": text}, reason
    try:
        calls, answer = parse_answer(text)
    except (ValueError, KeyError, TypeError):
        raise ModelHostError("the model's answer is not the tool layout") from None
    if answer is not None:
        return {"content": answer}, "stop"
    schemas = {t.name: t.parameters for t in structure.tools}
    for call in calls:
        why = violation(json.loads(call.arguments), schemas[call.name])
        if why:
            raise ModelHostError(f"the arguments of a call to {call.name} do not validate: {why}")
    return {"content": None, "tool_calls": [_tool_call(c) for c in calls]}, "tool_calls"


def streamed(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The deltas of a finished structured message, as OpenAI streams tool calls: per call
    one delta with its id, type, name and empty arguments, then one with the arguments."""
    calls = fields.get("tool_calls")
    if not calls:
        return [{"content": fields["content"]}] if fields.get("content") else []
    deltas = []
    for i, call in enumerate(calls):
        head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas.append({"tool_calls": [{"index": i, **head}]})
        args = call["function"]["arguments"]
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": args}}]})
    return deltas
