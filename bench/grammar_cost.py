"""The per-token cost of grammar-constrained decoding, and whether a constrained request slows
a plain one beside it.

On a one-layer GGUF of law-chat's shape (its 32,000-token vocabulary, 4096 wide: what the
grammar works over is the vocabulary, so the cost per token is the real one; the layers only
add the same time to every row), in-process through the model host:
1. decode ms per token of one request: plain, json_object, a json_schema (a contract party),
   tools (two functions, tool_choice "required");
2. a plain request's decode tokens/s alone, and beside a json_schema request (two slots);
3. (`--sampler-only`) the sampler chain alone on the 32,000-token vocabulary, random logits,
   with and without each grammar: the grammar's own cost per token, apart from the model's
   step (which a loaded machine makes noisy).

    .venv/bin/python bench/grammar_cost.py [--tokens 48] [--rounds 3] [--sampler-only]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np

from lawchatd.modelhost import ModelHost
from lawchatd.modelhost.chat_types import Conversation, Sampling
from lawchatd.modelhost.grammar import schema_grammar
from lawchatd.modelhost.sampling import Candidates, build_chain, build_grammar, pick_constrained
from lawchatd.modelhost.tools import Tool, tool_grammar
from lawchatd.testing.lawchat_gguf import LawChatShape, make_lawchat_gguf

ASK = Conversation.parse([{"role": "user", "content": "Who are the parties to this lease?"}])
PARTY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "role": {"enum": ["landlord", "tenant"]},
        "signed": {"type": "string", "format": "date"},
    },
    "required": ["name", "role", "signed"],
    "additionalProperties": False,
}
TOOLS = [
    Tool("find_clause", "Find a clause", {"type": "object", "properties": {"q": {"type": "string"}}}),
    Tool("days_between", "Days between dates", {
        "type": "object",
        "properties": {"a": {"type": "string", "format": "date"}, "b": {"type": "string"}},
        "required": ["a", "b"],
    }),
]  # fmt: skip


def kinds(tokens: int) -> dict[str, Sampling]:
    base = {"max_tokens": tokens, "seed": 1, "logit_bias": {2: -100.0}}  # no early </s>
    return {
        "plain": Sampling(**base),
        "json_object": Sampling(**base, json_object=True),
        "json_schema": Sampling(**base, grammar=schema_grammar(PARTY)),
        "tools": Sampling(**base, grammar=tool_grammar(TOOLS, "required", True)),
    }


async def decode_ms(host: ModelHost, sampling: Sampling) -> tuple[float, int]:
    """ms per token after the first, and the tokens."""
    first = last = 0.0
    tokens = 0
    async for chunk in host.chat_stream(ASK, sampling):
        now = time.perf_counter()
        first = first or now
        last = now
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return (last - first) * 1000 / max(tokens - 1, 1), tokens


def sampler_us(
    vocab: llama_cpp.llama_vocab_p, sampling: Sampling, tokens: int, lazy: bool
) -> float:
    """Microseconds per token of sampling over random logits (a random model: the worst
    case for a lazy check, whose picks the grammar mostly refuses). ``lazy``: the engine's
    way (`pick_constrained`); else the grammar in the chain, over the whole vocabulary."""
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    chain = build_chain(vocab, n_vocab, sampling, 1024, grammar=not lazy)
    grammar = build_grammar(vocab, sampling) if lazy else None
    rng = np.random.default_rng(0)
    scratch = Candidates(n_vocab)
    spent, done = 0.0, 0
    for _ in range(tokens):
        logits = rng.normal(size=n_vocab).astype(np.float32)
        started = time.perf_counter()
        if grammar is None:
            array = scratch.load(logits)
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
            token = array.data[array.selected].id
            llama_cpp.llama_sampler_accept(chain, token)
        else:
            token = pick_constrained(chain, grammar, lambda: scratch.load(logits))  # noqa: B023
        spent += time.perf_counter() - started
        done += 1
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
    for sampler in (chain, grammar):
        if sampler is not None:
            llama_cpp.llama_sampler_free(sampler)
    return spent * 1e6 / done


def sampler_only(path: Path, tokens: int) -> None:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    print("3. sampling alone, µs per token (32,000-token vocabulary, random logits)")
    print("   kind         grammar over the vocabulary   checked on the pick (the engine's)")
    for name, sampling in kinds(tokens).items():
        full = sampler_us(vocab, sampling, tokens, lazy=False)
        lazy = sampler_us(vocab, sampling, tokens, lazy=True) if name != "plain" else full
        print(f"   {name:12s} {full:9.0f} {lazy:30.0f}")
    llama_cpp.llama_model_free(model)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sampler-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_lawchat_gguf(Path(tmp) / "one-layer.gguf", LawChatShape(n_layer=1))
        if args.sampler_only:
            sampler_only(path, args.tokens)
            return
        host = ModelHost(n_ctx=1024, parallel=2, n_threads=2)
        await host.load("one-layer", path)
        try:
            samplings = kinds(args.tokens)
            await decode_ms(host, samplings["plain"])  # warm up
            print("1. decode ms/token alone (median of rounds)")
            for name, sampling in samplings.items():
                runs = [await decode_ms(host, sampling) for _ in range(args.rounds)]
                ms = statistics.median(r[0] for r in runs)
                print(f"   {name:12s} {ms:7.2f} ms/token  ({runs[0][1]} tokens)")
            print("2. a plain request's decode ms/token")
            alone = [await decode_ms(host, samplings["plain"]) for _ in range(args.rounds)]

            async def beside(other: str) -> float:
                """A plain request's median ms/token while an `other` one decodes beside it."""
                runs = []
                for _ in range(args.rounds):
                    plain, _ = await asyncio.gather(
                        decode_ms(host, samplings["plain"]), decode_ms(host, samplings[other])
                    )
                    runs.append(plain[0])
                return statistics.median(runs)

            print(f"   alone                     {statistics.median(r[0] for r in alone):7.2f}")
            print(f"   beside a json_schema one  {await beside('json_schema'):7.2f}")
            print(f"   beside a plain one        {await beside('plain'):7.2f}")
        finally:
            await host.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
