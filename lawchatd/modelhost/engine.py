"""Continuous batching: up to ``n_seq`` requests decode together in one llama context.

Each request is a sequence with its own KV cells (seq_id), its own sampler chain and its own
output queue. Every step is one ``llama_decode`` over a batch holding the next token of each
decoding sequence plus a slice of a new prompt, then one sample per sequence that asked for
logits. Every active sequence advances by one token per step (fair by construction); a free
slot goes to the caller with the fewest requests in slots, round robin among equals
(fairqueue.py), so one key's many queued requests do not keep others waiting; a long
prompt is fed in slices while others decode so their streams do not freeze.

Threads: state lives on the event loop; only ``_step`` runs in the engine's own thread and
touches llama.cpp (KV removals, decode, sampling). The loop plans a step, awaits it and
applies its result, so the two never touch the same sequence at once.

A finished request's cells stay cached in its slot for a follow-up that shares the prefix
(see slots.py). When the shared KV cache is full (decode returns 1), cached prefixes go
first; then the youngest sequence is preempted: its cells are dropped and it goes back to
the head of the queue with its prompt and answer so far, to be fed again later; its sampler
chain keeps its state, so the answer goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from lawchatd.modelhost.chat_types import FinishReason, Sampling, Usage
from lawchatd.modelhost.errors import ModelHostError
from lawchatd.modelhost.fairqueue import FairQueue
from lawchatd.modelhost.loader import Loaded, free_model
from lawchatd.modelhost.sampling import TextOut, build_chain, token_piece
from lawchatd.modelhost.slots import Slots

log = logging.getLogger(__name__)

# Tokens ("rows") of a step that carries decode tokens and a prompt slice together. On x86
# CPUs llama.cpp multiplies repacked Q4_0 weights 16 rows at a time, then 4, then one row at a
# time for what is left. Measured on the 7B shape (bench/batch_ceiling.py, bench/README.md) a
# row costs 51-53 ms in a 16- or 32-row step, 73 ms in a 4-row step, 103-117 ms in a step of
# 1-3 rows. So a prompt fed beside decoding sequences is sliced to fill the step to whole
# 16-row tiles: its tokens cost about what they cost alone, the decode tokens beside them cost
# half what they cost in a step of their own, and the others' streams advance every ~1.7 s
# (a 128-token slice: every ~7 s). The newcomer's prompt is fed ~8 % slower than in 128-token
# slices. Tuned on CPU; with the model on a GPU, bigger slices would feed prompts faster.
MIXED_STEP_ROWS = 32
ROW_TILE = 16
assert MIXED_STEP_ROWS % ROW_TILE == 0
_KV_FULL = object()


@dataclass(frozen=True)
class Finish:
    text: str
    reason: FinishReason
    usage: Usage


@dataclass(eq=False)
class Seq:
    """One request inside the engine."""

    prompt: list[int]
    sampling: Sampling
    max_new: int  # exact cap on completion tokens
    owner: str = ""  # who asked (a key's name): slots are shared round robin between owners
    out: asyncio.Queue[str | Finish | Exception] = field(default_factory=asyncio.Queue)
    tokens: list[int] = field(default_factory=list)  # prompt + sampled so far
    pending: list[int] = field(default_factory=list)  # not yet in the KV cache
    n_past: int = 0
    seq_id: int = -1
    chain: Any = None  # made and used on the engine thread
    generated: int = 0
    cancelled: bool = False
    text: TextOut = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.pending = list(self.prompt)
        self.text = TextOut(self.sampling.stop)


@dataclass(frozen=True)
class _Slice:
    seq: Seq
    tokens: list[int]
    pos: int
    logits: bool


def mixed_step_rows(decoding: int, n_batch: int) -> int:
    """Tokens a step may hold when ``decoding`` sequences each need one. With none, the whole
    batch: a prompt alone goes at full speed. Else MIXED_STEP_ROWS, or, with many decoders,
    whole ROW_TILEs that leave a prompt at least a tile of its own (it is never starved)."""
    if not decoding:
        return n_batch
    rows = max(MIXED_STEP_ROWS, -(-(decoding + ROW_TILE) // ROW_TILE) * ROW_TILE)
    return min(rows, n_batch)


class Engine:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.n_ctx = loaded.n_ctx
        self.waiting: FairQueue[Seq] = FairQueue()
        self.active: list[Seq] = []
        self._slots = Slots(loaded.n_seq)
        self._chains_to_free: list[Any] = []  # freed on the engine thread
        self._wake = asyncio.Event()
        self._retiring = False
        self._aborted: Exception | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lawchatd-llama")
        self.closed = asyncio.Event()
        self.last_used = time.monotonic()
        self.tokens_generated = 0
        self.steps = 0  # llama_decode calls
        self.prompt_tokens_fed = 0  # prompt tokens decoded (a reused prefix is not fed)
        self._task = asyncio.ensure_future(self._run())

    # --- loop side API ---

    @property
    def load(self) -> int:
        return len(self.active) + len(self.waiting)

    def submit(self, seq: Seq) -> None:
        self.waiting.append(seq)
        self.last_used = time.monotonic()
        self._wake.set()

    def cancel(self, seq: Seq) -> None:
        seq.cancelled = True
        self._wake.set()

    def retire(self) -> None:
        """Serve what was submitted, then free the model."""
        self._retiring = True
        self._wake.set()

    def abort(self, error: Exception) -> None:
        """Stop every request now (they get ``error``), then free the model."""
        self._aborted = error
        self._retiring = True
        self._wake.set()

    async def run_in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the loop ---

    async def _run(self) -> None:
        try:
            while True:
                if self._aborted is not None:
                    self._fail_all(self._aborted)
                self._drop_cancelled()
                self._admit()
                if not self.active and not self._chains_to_free:
                    if self._retiring and not self.waiting:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                plan = self._plan()
                chains, self._chains_to_free = self._chains_to_free, []
                trims = self._slots.pop_trims()
                try:
                    result = await self.run_in_thread(self._step, plan, trims, chains)
                except Exception as exc:
                    log.exception("llama_decode failed; the requests in this step fail")
                    self._fail_all(ModelHostError(f"the model failed: {exc}"))
                    continue
                self.steps += 1
                if result is _KV_FULL:
                    if not self._slots.evict():
                        self._preempt()
                else:
                    self._apply(plan, result)
        except Exception:
            log.exception("the engine failed; its requests fail")
            self._fail_all(ModelHostError("the model host failed; see its log"))
            raise
        finally:
            await self.run_in_thread(free_model, self.loaded)
            self._pool.shutdown(wait=False)
            self.closed.set()

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.active if s.cancelled]:
            self._release(seq)
        self.waiting.remove_if(lambda s: s.cancelled)

    def _admit(self) -> None:
        used = sum(s.n_past + len(s.pending) for s in self.active)
        running = Counter(s.owner for s in self.active)
        while self._slots and (head := self.waiting.head(running)) is not None:
            room = self.n_ctx - used - self._slots.cached_cells
            if room < len(head.pending) + 1 and self._slots.evict():
                continue
            if self.active and room < len(head.pending) + 1:
                break  # the one whose turn it is waits for cells; nobody jumps ahead
            self.waiting.pop(head)
            running[head.owner] += 1
            head.seq_id, reused = self._slots.take(head.tokens)
            head.n_past, head.pending = reused, head.tokens[reused:]
            self.active.append(head)
            used += len(head.tokens)

    def _plan(self) -> list[_Slice]:
        decoding = [s for s in self.active if s.n_past > 0 and len(s.pending) == 1]
        plan = [_Slice(s, s.pending, s.n_past, True) for s in decoding]
        budget = mixed_step_rows(len(decoding), self.loaded.n_batch) - len(decoding)
        for seq in self.active:
            if budget <= 0:
                break
            if seq in decoding:
                continue
            n = min(len(seq.pending), budget)
            plan.append(_Slice(seq, seq.pending[:n], seq.n_past, n == len(seq.pending)))
            budget -= n
        return plan

    def _apply(self, plan: list[_Slice], sampled: list[tuple[int, bytes, bool] | None]) -> None:
        for part, result in zip(plan, sampled, strict=True):
            seq = part.seq
            self.prompt_tokens_fed += max(0, min(len(seq.prompt) - seq.n_past, len(part.tokens)))
            seq.n_past += len(part.tokens)
            del seq.pending[: len(part.tokens)]
            if result is None or seq.cancelled:
                continue
            token, piece, end = result
            if end:
                self._finish(seq, seq.text.flush(), "stop")
                continue
            seq.generated += 1
            self.tokens_generated += 1
            text, stopped = seq.text.feed(piece)
            if stopped:
                self._finish(seq, text, "stop")
            elif seq.generated >= seq.max_new:
                self._finish(seq, text + seq.text.flush(), "length")
            else:
                if text:
                    seq.out.put_nowait(text)
                seq.tokens.append(token)
                seq.pending = [token]
        self.last_used = time.monotonic()

    def _finish(self, seq: Seq, text: str, reason: FinishReason) -> None:
        seq.out.put_nowait(Finish(text, reason, Usage(len(seq.prompt), seq.generated)))
        self._release(seq)

    def _release(self, seq: Seq) -> None:
        self.active.remove(seq)
        self._drop_chain(seq)
        self._slots.give_back(seq.seq_id, seq.tokens[: seq.n_past])

    def _drop_chain(self, seq: Seq) -> None:
        if seq.chain is not None:  # freed by the engine thread at its next step
            self._chains_to_free.append(seq.chain)
            seq.chain = None

    def _preempt(self) -> None:
        victim = self.active[-1]
        if len(self.active) == 1:  # alone and still no room: cannot happen with max_new
            self._fail(victim, ModelHostError("the context window is full"))
            return
        log.info("KV cache full: request %d waits to be fed again", victim.seq_id)
        self.active.remove(victim)
        self._slots.drop(victim.seq_id)  # the chain stays: the answer goes on
        victim.pending, victim.n_past = list(victim.tokens), 0
        self.waiting.appendleft(victim)

    def _fail(self, seq: Seq, error: Exception) -> None:
        seq.out.put_nowait(error)
        self._release(seq)

    def _fail_all(self, error: Exception) -> None:
        for seq in list(self.active):
            self._fail(seq, error)
        for seq in self.waiting.clear():
            seq.out.put_nowait(error)
            self._drop_chain(seq)  # a preempted request already had one

    # --- engine thread ---

    def _step(
        self, plan: list[_Slice], trims: list[tuple[int, int]], chains: list[Any]
    ) -> list[tuple[int, bytes, bool] | None] | object:
        lo = self.loaded
        for seq_id, p0 in trims:
            llama_cpp.llama_memory_seq_rm(lo.memory, seq_id, p0, -1)
        for chain in chains:
            llama_cpp.llama_sampler_free(chain)
        if not plan:
            return []
        batch, n, outputs = lo.batch, 0, []
        for part in plan:
            for i, token in enumerate(part.tokens):
                batch.token[n] = token
                batch.pos[n] = part.pos + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = part.seq.seq_id
                batch.logits[n] = part.logits and i == len(part.tokens) - 1
                n += 1
            outputs.append(n - 1 if part.logits else None)
        batch.n_tokens = n
        ret = llama_cpp.llama_decode(lo.ctx, batch)
        if ret == 1:
            return _KV_FULL
        if ret != 0:
            raise RuntimeError(f"llama_decode returned {ret}")
        return [
            None if idx is None else self._sample(part.seq, idx)
            for part, idx in zip(plan, outputs, strict=True)
        ]

    def _sample(self, seq: Seq, idx: int) -> tuple[int, bytes, bool]:
        lo = self.loaded
        if seq.chain is None:
            seq.chain = build_chain(lo.vocab, lo.n_vocab, seq.sampling, lo.n_ctx)
        token = llama_cpp.llama_sampler_sample(seq.chain, lo.ctx, idx)
        end = llama_cpp.llama_vocab_is_eog(lo.vocab, token)
        return token, b"" if end else token_piece(lo.vocab, token), end
