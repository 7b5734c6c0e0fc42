"""Tools for a model without tool tokens (Llama-2 chat): the tool list goes into the system
prompt, and a grammar makes the answer one JSON object, either

    {"tool_calls": [{"name": "<a tool>", "arguments": {...valid against its parameters...}}]}

or, where the model may answer instead (tool_choice "auto"),

    {"response": "<the answer to the user>"}

This is the generic layout of llama.cpp's server for models without a native format. The
grammar is built from one JSON Schema (the calls' union), so a call's arguments are valid
against its function's schema by construction; the web layer still checks them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from lawchatd.modelhost.grammar import check_supported, schema_grammar

Choice = Literal["auto", "required"] | str  # or the name of the one function to call


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def _hoisted(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> Any:
    """``schema`` with its $defs moved into ``defs`` under ``prefix`` (refs rewritten), so
    that several tools' schemas can live in one document."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key in ("$defs", "definitions"):
                for name, sub in value.items():
                    defs[f"{prefix}{name}"] = walk(sub)
            elif key == "$ref" and isinstance(value, str):
                for root in ("#/$defs/", "#/definitions/"):
                    if value.startswith(root):
                        value = f"#/$defs/{prefix}{value[len(root) :]}"
                out[key] = value
            else:
                out[key] = walk(value)
        return out

    return walk(schema)


def _call_schema(tool: Tool, i: int, defs: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": tool.name},
            "arguments": _hoisted(tool.parameters, f"t{i}_", defs),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def answer_schema(tools: list[Tool], choice: Choice, parallel: bool) -> dict[str, Any]:
    """The JSON Schema of what the model may write."""
    chosen = tools if choice in ("auto", "required") else [t for t in tools if t.name == choice]
    defs: dict[str, Any] = {}
    calls = [_call_schema(t, i, defs) for i, t in enumerate(chosen)]
    array: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
    }
    if not parallel:
        array["maxItems"] = 1
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"tool_calls": array},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if choice == "auto":
        response = {
            "type": "object",
            "properties": {"response": {"type": "string"}},
            "required": ["response"],
            "additionalProperties": False,
        }
        schema = {"anyOf": [schema, response]}
    if defs:
        schema["$defs"] = defs
    return schema


def check_tool(tool: Tool) -> None:
    """UnsupportedSchema for parameters a grammar cannot enforce (raised per tool, so the
    error names the tool's own schema)."""
    check_supported(tool.parameters)


def tool_grammar(tools: list[Tool], choice: Choice, parallel: bool) -> str:
    return schema_grammar(answer_schema(tools, choice, parallel))


def tool_prompt(tools: list[Tool], choice: Choice, parallel: bool) -> str:
    """The text added to the system prompt: the tools, and how to call them."""
    lines = ["You have these tools (functions) to help answer the user:", ""]
    for tool in tools:
        lines.append(f"- {tool.name}: {tool.description or '(no description)'}")
        lines.append(f"  arguments (JSON Schema): {json.dumps(tool.parameters)}")
    many = "one or more calls" if parallel else "one call"
    how = (
        f'To call tools, answer only with JSON: {{"tool_calls": [{{"name": "<tool name>", '
        f'"arguments": {{...}}}}]}} ({many}).'
    )
    if choice == "auto":
        how += ' To answer the user directly, answer only with JSON: {"response": "<answer>"}.'
    elif choice != "required":
        how += f" Call the tool {choice}."
    lines += ["", how, "Results of calls come back in the next message, then answer."]
    return "\n".join(lines)


def parse_answer(text: str) -> tuple[list[Call], str | None]:
    """(the calls, the direct answer) of the model's JSON; ValueError if it is not the
    layout above (an answer cut by max_tokens)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if "response" in data and isinstance(data["response"], str):
        return [], data["response"]
    calls = data.get("tool_calls")
    if not isinstance(calls, list):
        raise ValueError("no tool_calls")
    return [Call(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in calls], None


def written_calls(calls: list[tuple[str, str]]) -> str:
    """An earlier assistant turn's calls (name, arguments JSON) as the model wrote them."""
    return json.dumps(
        {"tool_calls": [{"name": n, "arguments": json.loads(a or "{}")} for n, a in calls]},
        ensure_ascii=False,
    )
