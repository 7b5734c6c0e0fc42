"""What batching can give on this machine, measured on llama.cpp itself (no lawchatd, no HTTP).

    .venv/bin/python bench/batch_ceiling.py MODEL.gguf [--users 4] [--prompt 40] [--tokens 24]

Loads the model the way lawchatd does (loader.open_model: read, not mmap; unified KV cache; one
slot per user) and times ``llama_decode`` directly (best of 2-3):

1. the cost of one step by its rows (tokens): up to ``--users`` rows, a decode step of that
   many users (a logit each); past that, the step lawchatd makes when one user's prompt is fed
   beside the others' decoding (``users - 1`` decode rows, a slice with one logit at its end);
2. the ceiling for ``--users`` users decoding together against one at a time (median of
   ROUNDS rounds, each timing both back to back),
   ``users * step(1) / step(users)``: a user adds at most one token to a step (its next token
   needs the one before), so a decode step holds at most ``users`` rows, whatever the server;
3. the same for the workload bench/serve.py measures (every user's prompt fed, then
   ``--tokens`` tokens each, all users at once against one after another): the best aggregate
   ratio llama.cpp's kernels allow on it with these threads.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import llama_cpp

from lawchatd.modelhost.loader import Loaded, free_model, open_model

ROUNDS = 5


class Steps:
    """One context; each sequence's position moves on as it is fed."""

    def __init__(self, lo: Loaded) -> None:
        self.lo = lo
        self.pos = [0] * lo.n_seq

    def decode(self, rows: list[int]) -> float:
        """One llama_decode with one token for each seq id in ``rows`` (a seq id may repeat:
        several prompt tokens of one sequence); seconds it took."""
        batch = self.lo.batch
        assert len(rows) <= self.lo.n_batch, "more rows than one llama_decode takes"
        for n, seq in enumerate(rows):
            batch.token[n] = 1000 + (self.pos[seq] * 7 + n) % 20000
            batch.pos[n] = self.pos[seq]
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = n == len(rows) - 1 or rows[n + 1] != seq
            self.pos[seq] += 1
        batch.n_tokens = len(rows)
        started = time.perf_counter()
        if llama_cpp.llama_decode(self.lo.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self.lo.memory, True)
        self.pos = [0] * self.lo.n_seq


def step_rows(k: int, users: int) -> list[int]:
    """Seq ids of a k-row step: k users decoding, or (past ``users`` rows) all but the last
    decoding and the last one's prompt slice filling the step."""
    if k <= users:
        return list(range(k))
    return list(range(users - 1)) + [users - 1] * (k - users + 1)


def timed(steps: Steps, rows: list[int], repeats: int) -> float:
    return min(steps.decode(rows) for _ in range(repeats))


def fresh(steps: Steps, rows: list[int], repeats: int = 3) -> float:
    """Best of ``repeats`` from an empty cache: prompts fed from position 0."""
    best = float("inf")
    for _ in range(repeats):
        steps.reset()
        best = min(best, steps.decode(rows))
    return best


def measure(model: Path, users: int, prompt: int, tokens: int, threads: int | None) -> dict:
    lo = open_model(model, n_ctx=4096, n_seq=users, n_threads=threads, n_gpu_layers=None)
    try:
        steps = Steps(lo)
        for seq in range(users):  # every sequence has a short history, as when decoding
            steps.decode([seq] * prompt)
        per_rows = {}
        for k in sorted({1, 2, 3, 4, users, 8, 16, 32}):
            per_rows[k] = timed(steps, step_rows(k, users), 3 if k <= 8 else 2)
        # The ratios from rounds that measure both sides back to back (median): the machine's
        # speed drifts between minutes, not within a round.
        decode, work = [], []
        for _ in range(ROUNDS):
            fill = fresh(steps, [0] * prompt, 1)  # one user's prompt, alone
            fill_all = fresh(steps, [s for s in range(users) for _ in range(prompt)], 1)
            pairs = [(steps.decode([0]), steps.decode(list(range(users)))) for _ in range(4)]
            one, together = (statistics.mean(side) for side in zip(*pairs, strict=True))
            decode.append(users * one / together)
            sequential = users * (fill + (tokens - 1) * one)
            batched = fill_all + (tokens - 1) * together
            work.append((sequential / batched, sequential, batched))
        ratio, sequential, batched = sorted(work)[len(work) // 2]
        return {
            "users": users,
            "step_ms_by_rows": {k: round(v * 1000, 1) for k, v in per_rows.items()},
            "ms_per_token_by_rows": {k: round(v * 1000 / k, 1) for k, v in per_rows.items()},
            "decode_ceiling": statistics.median(decode),
            "decode_ceiling_rounds": [round(r, 3) for r in decode],
            "workload": {"prompt_tokens": prompt, "tokens": tokens},
            "workload_sequential_s": sequential,
            "workload_batched_s": batched,
            "workload_ceiling": ratio,
            "workload_ceiling_rounds": [round(w[0], 3) for w in work],
        }
    finally:
        free_model(lo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--prompt", type=int, default=40, help="prompt tokens per user")
    p.add_argument("--tokens", type=int, default=24, help="tokens each user is answered")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    out = measure(args.model, args.users, args.prompt, args.tokens, args.threads)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
