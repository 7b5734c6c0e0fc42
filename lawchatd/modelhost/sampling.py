"""One llama.cpp sampler chain per request, and the text it becomes (UTF-8, stop strings).

The chain honours every `Sampling` field: logit_bias, presence/frequency penalties over the
answer so far, a grammar (json_object's, or one from a JSON Schema), then greedy (temperature 0) or top_p,
temperature and a seeded random pick. Chains are made and used on the engine's thread only.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Callable

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF

from lawchatd.modelhost.chat_types import Sampling


def build_grammar(vocab: llama_cpp.llama_vocab_p, s: Sampling) -> int | None:
    """The request's grammar sampler, kept out of its chain (see `sample_constrained`);
    None without one. Free it with llama_sampler_free."""
    grammar = s.grammar or (JSON_GBNF if s.json_object else None)
    if not grammar:
        return None
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:  # llama.cpp could not parse it: a bug in the converter, not the user's
        raise ValueError("llama.cpp refused the grammar built for this request")
    return sampler


def build_chain(
    vocab: llama_cpp.llama_vocab_p, n_vocab: int, s: Sampling, n_ctx: int, *, grammar: bool = True
) -> int:
    """A new sampler chain (free it with llama_sampler_free); ``grammar=False`` leaves the
    request's grammar out (the engine applies it apart, `sample_constrained`)."""
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
    if grammar and (s.grammar or s.json_object):
        try:
            add(build_grammar(vocab, s))
        except ValueError:
            llama_cpp.llama_sampler_free(chain)
            raise
    if s.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


class Candidates:
    """One sequence's reusable array of every token with its logit (no copy per token)."""

    def __init__(self, n_vocab: int) -> None:
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.n_vocab = n_vocab
        self._ptr = self.data.ctypes.data_as(llama_cpp.llama_token_data_p)

    def of(self, ctx: llama_cpp.llama_context_p, idx: int) -> llama_cpp.llama_token_data_array:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), (self.n_vocab,))
        return self.load(logits)

    def load(self, logits: np.ndarray) -> llama_cpp.llama_token_data_array:
        self.data["id"] = np.arange(self.n_vocab, dtype=np.int32)  # the chain reorders them
        self.data["logit"] = logits
        self.data["p"] = 0.0
        return llama_cpp.llama_token_data_array(self._ptr, self.n_vocab, -1, False)


def sample_constrained(
    chain: int, grammar: int, ctx: llama_cpp.llama_context_p, idx: int, scratch: Candidates
) -> int:
    """Sample with the grammar checked on the picked token only, as llama.cpp's own
    common_sampler does: run over the whole vocabulary, a grammar costs tens of ms a token
    (bench/README.md), and in the batched engine every sequence of the step waits for it.
    Pick from the chain; if the grammar allows the token, keep it; else pick again from
    the logits the grammar has masked. The result has the distribution of sampling from the
    masked logits (a valid token t comes first with p(t), or after a refusal with
    (1 - Z) p(t) / Z: p(t) / Z in all)."""
    return pick_constrained(chain, grammar, lambda: scratch.of(ctx, idx))


def pick_constrained(
    chain: int, grammar: int, fresh: Callable[[], llama_cpp.llama_token_data_array]
) -> int:
    """`sample_constrained` over ``fresh()`` candidates (new each call: samplers reorder)."""
    candidates = fresh()
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(candidates))
    token = int(candidates.data[candidates.selected].id)
    one = np.array([(token, 1.0, 0.0)], dtype=_TOKEN_DATA)
    check = llama_cpp.llama_token_data_array(
        one.ctypes.data_as(llama_cpp.llama_token_data_p), 1, -1, False
    )
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(check))
    if not np.isfinite(one["logit"][0]):  # refused: the grammar first, then the chain
        candidates = fresh()
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(candidates))
        token = int(candidates.data[candidates.selected].id)
    llama_cpp.llama_sampler_accept(grammar, token)
    llama_cpp.llama_sampler_accept(chain, token)
    return token


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
