"""One llama.cpp sampler chain per request, and the text it becomes (UTF-8, stop strings).

The chain honours every `Sampling` field: logit_bias, presence/frequency penalties over the
answer so far, a grammar (json_object's, or one from a JSON Schema), then greedy (temperature 0) or top_p,
temperature and a seeded random pick. Chains are made and used on the engine's thread only.
"""

from __future__ import annotations

import codecs
import ctypes

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF

from lawchatd.modelhost.chat_types import Sampling


def build_chain(vocab: llama_cpp.llama_vocab_p, n_vocab: int, s: Sampling, n_ctx: int) -> int:
    """A new sampler chain (free it with llama_sampler_free)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if s.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(s.logit_bias))()
        for i, (token, bias) in enumerate(s.logit_bias.items()):
            biases[i].token, biases[i].bias = int(token), float(bias)
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
    if s.presence_penalty or s.frequency_penalty:
        # OpenAI's penalties count the answer's own tokens; the repeat penalty stays off.
        add(
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, n_ctx, 1.0, s.frequency_penalty, s.presence_penalty
            )
        )
    grammar = s.grammar or (JSON_GBNF if s.json_object else None)
    if grammar:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not sampler:  # llama.cpp could not parse it: a bug in the converter, not the user's
            llama_cpp.llama_sampler_free(chain)
            raise ValueError("llama.cpp refused the grammar built for this request")
        add(sampler)
    if s.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


def token_piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n > len(buf):
        buf = ctypes.create_string_buffer(n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[: max(n, 0)]


def tokenize(vocab: llama_cpp.llama_vocab_p, text: str) -> list[int]:
    """Plain text (no BOS, no special tokens parsed: a user's "</s>" stays text)."""
    data = text.encode()
    room = len(data) + 8
    tokens = (llama_cpp.llama_token * room)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, room, False, False)
    if n < 0:
        tokens = (llama_cpp.llama_token * -n)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, -n, False, False)
    return list(tokens[:n])


class TextOut:
    """Token bytes in, text out: whole characters only, and nothing of a stop string.

    Text that could be the start of a stop string is held back until the next tokens show
    it is not; a matched stop string and everything after it is dropped.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """(text that may be sent now, whether a stop string ended the answer)."""
        self._held += self._decoder.decode(piece)
        for stop in self._stops:
            at = self._held.find(stop)
            if at >= 0:
                text, self._held = self._held[:at], ""
                return text, True
        keep = max((_overlap(self._held, s) for s in self._stops), default=0)
        cut = len(self._held) - keep
        text, self._held = self._held[:cut], self._held[cut:]
        return text, False

    def flush(self) -> str:
        """What is left when the answer ends for another reason (max_tokens, end of text)."""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``stop``."""
    for k in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
