"""Llama-2 chat prompts from OpenAI-style messages.

The law-chat models are Llama-2-Chat fine-tunes, so a conversation is laid out as Meta's
reference code does it::

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]

Each ``<s>...</s>`` is one turn; the last turn is open (no answer, no ``</s>``).

BOS/EOS choice: the model host does not hand this text to llama.cpp. It calls
:func:`encode_llama2`, which tokenizes each turn's text as *plain text* and inserts the
BOS/EOS token ids itself, exactly like Meta's reference (``encode(turn, bos=True, eos=True)``).
That way there is exactly one BOS at the start (llama-cpp adds none to a token-list prompt),
and a user who types ``</s>`` or ``<s>`` cannot end a turn or forge one: those stay text.
:func:`format_llama2` gives the same prompt as a string, for logs, docs and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
BOS, EOS = "<s>", "</s>"
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

Message = Mapping[str, Any]


def _checked(messages: Sequence[Message]) -> list[tuple[str, str]]:
    if not messages:
        raise ValueError("messages must not be empty")
    out: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append((role, content.strip()))
    if out[-1][0] != "user":
        raise ValueError("the last message must come from the user")
    return out


def _merge(msgs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join consecutive messages of one role: Llama-2 needs strict user/assistant turns."""
    merged: list[tuple[str, str]] = []
    for role, content in msgs:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n\n{content}")
        else:
            merged.append((role, content))
    return merged


def llama2_turns(messages: Sequence[Message]) -> list[str]:
    """The text of each turn, without BOS/EOS; all but the last end with an answer.

    System messages must come first (several are joined); they go into the first turn.
    Raises ValueError on an empty list, an unknown role, a system message after the
    conversation started, an assistant message first, or a last message not from the user.
    """
    msgs = _checked(messages)
    n_sys = next(i for i, (role, _) in enumerate(msgs) if role != "system")
    if any(role == "system" for role, _ in msgs[n_sys:]):
        raise ValueError("system messages must come before the user and assistant messages")
    system = "\n\n".join(c for _, c in msgs[:n_sys])
    convo = _merge(msgs[n_sys:])
    if convo[0][0] != "user":
        raise ValueError("the conversation must start with a user message")

    turns: list[str] = []
    for i in range(0, len(convo), 2):
        user = convo[i][1]
        if i == 0 and system:
            user = f"{B_SYS}{system}{E_SYS}{user}"
        turn = f"{B_INST} {user} {E_INST}"
        if i + 1 < len(convo):
            turn += f" {convo[i + 1][1]} "
        turns.append(turn)
    return turns


def format_llama2(messages: Sequence[Message], *, bos: bool = True) -> str:
    """The whole prompt as text. ``bos=False`` drops the leading ``<s>`` for tokenizers
    that add BOS themselves (llama-cpp's ``tokenize(add_bos=True)``)."""
    text = f"{EOS}{BOS}".join(llama2_turns(messages))
    return BOS + text if bos else text


@dataclass(frozen=True)
class Conversation:
    """A conversation checked and laid out in Llama-2 turns: parsed once, where the request
    is read (the web layer turns the ValueError into a 422), then handed to the model host."""

    turns: tuple[str, ...]

    @classmethod
    def parse(cls, messages: Sequence[Message]) -> Conversation:
        return cls(tuple(llama2_turns(messages)))


def encode_llama2(
    conversation: Conversation,
    tokenize: Callable[[str], list[int]],
    bos_id: int,
    eos_id: int,
) -> list[int]:
    """Token ids of the prompt. ``tokenize`` must encode plain text, adding no BOS and
    parsing no special tokens (llama-cpp: ``tokenize(b, add_bos=False, special=False)``)."""
    turns = conversation.turns
    ids: list[int] = []
    for i, turn in enumerate(turns):
        ids.append(bos_id)
        ids.extend(tokenize(turn))
        if i < len(turns) - 1:
            ids.append(eos_id)
    return ids
