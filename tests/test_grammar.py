"""JSON Schema to grammar, the tool layout and tool messages in the prompt: no model needed."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import BaseModel, Field

from lawchatd.modelhost.grammar import UnsupportedSchema, schema_grammar, violation
from lawchatd.modelhost.prompt import format_llama2
from lawchatd.modelhost.tools import Tool, answer_schema, parse_answer, tool_prompt
from lawchatd.web.chat_request import ChatRequest, prompt_messages, structure_of


class Clause(BaseModel):
    number: int
    text: str = Field(max_length=40)


class Contract(BaseModel):
    parties: list[str]
    clauses: list[Clause]
    governing_law: str | None = None


def test_a_pydantic_model_with_refs_becomes_a_grammar() -> None:
    grammar = schema_grammar(Contract.model_json_schema())
    assert "root ::=" in grammar and "clauses" in grammar
    # JSON strings hold no raw control characters (the converter alone would allow them).
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char


@pytest.mark.parametrize(
    ("schema", "keyword", "where"),
    [
        ({"type": "integer", "minimum": 1}, "minimum", "#"),
        (
            {"properties": {"tags": {"type": "array", "uniqueItems": True}}},
            "uniqueItems",
            "#/properties/tags",
        ),
        ({"$defs": {"A": {"not": {"type": "null"}}}, "$ref": "#/$defs/A"}, "not", "#/$defs/A"),
        ({"anyOf": [{"type": "number", "multipleOf": 2}]}, "multipleOf", "#/anyOf/0"),
    ],
)
def test_what_a_grammar_cannot_enforce_is_refused_by_name(schema, keyword, where) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        schema_grammar(schema)
    assert caught.value.keyword == keyword and caught.value.where == where
    assert caught.value.status == 400 and caught.value.code == "unsupported_schema"


def test_an_invalid_schema_is_refused() -> None:
    with pytest.raises(UnsupportedSchema, match="not a valid JSON Schema"):
        schema_grammar({"type": "integr"})


def test_violation_says_where() -> None:
    schema = Contract.model_json_schema()
    assert violation({"parties": ["A"], "clauses": []}, schema) is None
    assert "number" in violation({"parties": [], "clauses": [{"text": "x"}]}, schema)


def test_tool_answers_validate_against_one_schema_with_hoisted_refs() -> None:
    tools = [
        Tool("file", "File a contract", Contract.model_json_schema()),
        Tool("now", "", {"type": "object", "properties": {}}),
    ]
    schema = answer_schema(tools, "auto", parallel=True)
    assert set(schema["$defs"]) == {"t0_Clause"}
    call = {
        "name": "file",
        "arguments": {"parties": ["A"], "clauses": [{"number": 1, "text": "x"}]},
    }
    jsonschema.validate({"tool_calls": [call, {"name": "now", "arguments": {}}]}, schema)
    jsonschema.validate({"response": "hello"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tool_calls": [{"name": "file", "arguments": {}}]}, schema)
    one = answer_schema(tools, "now", parallel=False)
    jsonschema.validate({"tool_calls": [{"name": "now", "arguments": {}}]}, one)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"response": "hi"}, one)
    calls, answer = parse_answer(json.dumps({"tool_calls": [call]}))
    assert answer is None and calls[0].name == "file"
    assert json.loads(calls[0].arguments) == call["arguments"]


def test_the_tool_prompt_and_tool_messages_in_the_llama2_layout() -> None:
    body = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "You are a clerk."},
                {"role": "user", "content": "2+3?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "5"},
            ],
            "tools": [{"type": "function", "function": {"name": "add", "description": "Add"}}],
        }
    )
    structure = structure_of(body)
    prompt = format_llama2(prompt_messages(body, structure))
    assert prompt.startswith(
        "<s>[INST] <<SYS>>\nYou are a clerk.\n\n" + tool_prompt(list(structure.tools), "auto", True)
    )
    assert '[/INST] {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]} </s>' in prompt
    assert prompt.endswith("[INST] Result of the call to add:\n5 [/INST]")
