"""JSON Schema to a llama.cpp grammar (GBNF), and the check of an answer against its schema.

The conversion is llama-cpp-python's own (`llama_cpp.llama_grammar.json_schema_to_gbnf`,
the converter of llama.cpp's server). It honours types, properties, required,
additionalProperties, items/prefixItems with minItems/maxItems, enum, const, anyOf/oneOf,
allOf of objects, $ref into $defs/definitions, string pattern/minLength/maxLength and the
date, time, date-time and uuid formats. It silently ignores the rest (numeric ranges,
uniqueItems, not, if/then/else...): a grammar would then allow answers the schema forbids,
so such a schema is refused here, naming the keyword, rather than answered wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
from llama_cpp.llama_grammar import json_schema_to_gbnf

from lawchatd.errors import UserError

# Keywords the converter would ignore while they restrict what is valid.
UNSUPPORTED = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "not",
    "if", "then", "else", "uniqueItems", "contains", "minContains", "maxContains",
    "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
    "dependencies", "minProperties", "maxProperties", "unevaluatedProperties",
    "unevaluatedItems", "additionalItems",
)  # fmt: skip
# Keywords whose value maps names (or positions) to subschemas, not a subschema itself.
_NAMED = ("properties", "$defs", "definitions")
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


class UnsupportedSchema(UserError):
    """The schema cannot be enforced by a grammar (HTTP 400); ``keyword`` names what,
    ``where`` its JSON pointer in the schema. The web layer sets ``param``."""

    code = "unsupported_schema"

    def __init__(self, message: str, keyword: str, where: str) -> None:
        super().__init__(message)
        self.keyword, self.where = keyword, where


def _subschemas(schema: dict[str, Any], at: str) -> Iterator[tuple[dict[str, Any], str]]:
    for key in _NAMED:
        for name, sub in (schema.get(key) or {}).items():
            yield sub, f"{at}/{key}/{name}"
    for key in _LISTS:
        for i, sub in enumerate(schema.get(key) or ()):
            yield sub, f"{at}/{key}/{i}"
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            yield sub, f"{at}/{key}"
        elif isinstance(sub, list):
            yield from ((s, f"{at}/{key}/{i}") for i, s in enumerate(sub))


def check_supported(schema: Any, at: str = "#") -> None:
    """Raise UnsupportedSchema for the first keyword a grammar cannot enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{at} is not a schema (an object)", "schema", at)
    for keyword in UNSUPPORTED:
        if keyword in schema:
            raise UnsupportedSchema(
                f"the keyword '{keyword}' (at {at}) cannot be enforced while generating",
                keyword,
                at,
            )
    for sub, where in _subschemas(schema, at):
        check_supported(sub, where)


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF text (root rule "root") whose every sentence is valid against ``schema``."""
    check_supported(schema)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UnsupportedSchema(f"not a valid JSON Schema: {exc.message}", "schema", "#") from None
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(
            f"the grammar converter refused it: {exc}", _keyword_in(str(exc)), "#"
        ) from None
    # The converter's string characters include raw control characters (a newline), which
    # JSON forbids inside a string: a parser would refuse the answer. Only escapes allowed.
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _keyword_in(message: str) -> str:
    for keyword in ("$ref", "pattern", "format", "type"):
        if keyword.strip("$") in message.lower():
            return keyword
    return "schema"


def violation(instance: Any, schema: dict[str, Any]) -> str | None:
    """Why ``instance`` is not valid against ``schema``; None when it is."""
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(instance)
    )
    return None if error is None else f"{error.json_path}: {error.message}"
