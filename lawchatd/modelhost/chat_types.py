"""What the chat API asks of the model host, and what it gets back: plain data, no HTTP.

The web layer (`web/chat_request.py`) turns OpenAI request bodies into a `Conversation` and a
`Sampling`, and `web/routes/openai.py` builds the OpenAI objects from a `Completion` or from
`Chunk`s; the model host (`modelhost`) only generates. Every field of `Sampling` is honoured
by the host: a field it cannot honour is refused by the web layer with a 400, never ignored.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from lawchatd.modelhost.prompt import Conversation, Message  # noqa: F401  (re-exported)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """How to generate one answer.

    max_tokens: at most this many completion tokens, exactly (None: to the end of the
    context window). stop: strings that end the answer (not included in it).
    logit_bias: token id -> bias added to its logit (-100 bans it).
    json_object: constrain the answer to one JSON object (OpenAI's response_format
    {"type": "json_object"}), through a llama.cpp grammar.
    grammar: a GBNF grammar (root rule "root") the answer must follow, e.g. one built from a
    JSON Schema (`modelhost.grammar`); it takes the place of json_object's.
    """

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    json_object: bool = False
    grammar: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """A whole answer (`ModelHost.chat`)."""

    model_variant: str
    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True)
class Chunk:
    """One piece of a streamed answer (`ModelHost.chat_stream`).

    Pieces carry text; the last one has `finish_reason` and `usage` set (and may carry
    text too). Errors found before the first token are raised at the first `__anext__`.
    """

    model_variant: str
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


async def gathered(chunks: AsyncIterator[Chunk]) -> Completion:
    """The whole answer of a stream of chunks (closed at the end, or on an error)."""
    text: list[str] = []
    last: Chunk | None = None
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for last in chunks:
            text.append(last.text)
    assert last is not None and last.finish_reason is not None and last.usage is not None
    return Completion(last.model_variant, "".join(text), last.finish_reason, last.usage)
