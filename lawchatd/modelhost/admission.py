"""Chat admission: a request finds the answering model (waiting for one being loaded, or
waking one keep-alive unloaded), is tokenized and queued in its engine, and streams its
pieces back. Requests beyond ``queue_limit`` waiting, or waiting past ``load_wait`` for a
model, are refused (QueueFull, ModelWaitTimeout: 503 + Retry-After).

Each request names its caller (a key's name) and that key's limits: over them it is refused
(KeyLimitReached: 429 + Retry-After), and what it spends is counted (fairshare.py). In the
engine, slots are shared round robin between callers (fairqueue.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from lawchatd.modelhost.chat_types import Chunk, Sampling
from lawchatd.modelhost.counters import Counters
from lawchatd.modelhost.engine import Finish, Seq
from lawchatd.modelhost.errors import (
    InvalidRequest,
    KeyLimitReached,
    ModelWaitTimeout,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
)
from lawchatd.modelhost.fairshare import NO_LIMITS, FairShare, Limits
from lawchatd.modelhost.keepalive import KeepAlive
from lawchatd.modelhost.load_lock import LoadLock
from lawchatd.modelhost.prompt import Conversation, encode_llama2
from lawchatd.modelhost.sampling import tokenize
from lawchatd.modelhost.swap import Asleep, Resident, Swapper

RETRY_AFTER = 10  # seconds a client is told to wait after ModelWaitTimeout


class Admission:
    def __init__(
        self,
        swapper: Swapper,
        lock: LoadLock,
        keep_alive: KeepAlive,
        counters: Counters,
        wake: Callable[[Asleep], Awaitable[None]],
        *,
        parallel: int,
        queue_limit: int,
        load_wait: float,
    ) -> None:
        self._swapper = swapper
        self._lock = lock
        self._keep_alive = keep_alive
        self._counters = counters
        self._wake = wake
        self._parallel = parallel
        self.queue_limit = queue_limit
        self.load_wait = load_wait
        self.waiting_for_model = 0
        self.fair = FairShare()

    async def chat_stream(
        self,
        conversation: Conversation,
        sampling: Sampling,
        caller: str = "",
        limits: Limits = NO_LIMITS,
    ) -> AsyncIterator[Chunk]:
        """Text pieces, the last with finish_reason and usage. Errors before the first
        token (KeyLimitReached, NoModelLoaded, QueueFull, ModelWaitTimeout, PromptTooLong,
        InvalidRequest) are raised at the first ``__anext__``; closing the iterator cancels
        this request only."""
        try:
            usage = self.fair.enter(caller, limits)
        except KeyLimitReached as exc:
            raise self._refused(exc) from None
        try:
            model, seq = await self._enqueue(conversation, sampling, caller)
        except BaseException as exc:
            if isinstance(exc, QueueFull | NoModelLoaded | ModelWaitTimeout):
                usage.refused += 1
            self.fair.leave(usage)
            raise
        usage.requests += 1
        self.fair.spend(usage, prompt=len(seq.prompt))
        counters = self._counters
        started, finished = time.monotonic(), False
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Finish):
                    finished = True
                    counters.completion_tokens += item.usage.completion_tokens
                    self.fair.spend(usage, completion=item.usage.completion_tokens)
                    yield Chunk(model.variant, item.text, item.reason, item.usage)
                    return
                yield Chunk(model.variant, item)
        except (asyncio.CancelledError, GeneratorExit):
            counters.chat_cancelled += 1
            raise
        except Exception:
            counters.chat_failures += 1
            raise
        finally:
            if not finished:
                model.engine.cancel(seq)
                self.fair.spend(usage, completion=seq.generated)  # what it cost so far
            self.fair.leave(usage)
            counters.chat_seconds += time.monotonic() - started
            self._keep_alive.arm()

    async def _enqueue(
        self, conversation: Conversation, s: Sampling, caller: str
    ) -> tuple[Resident, Seq]:
        while True:
            model = await self._answering_model()
            engine = model.engine
            would_wait = engine.load >= self._parallel
            if would_wait and len(engine.waiting) >= self.queue_limit:
                raise self._refused(
                    QueueFull(f"Too many requests are waiting for the model ({self.queue_limit})")
                )
            prompt = await engine.run_in_thread(_encode, model, conversation, s)
            if model is not self._swapper.current:
                continue  # swapped while we tokenized: the new model may cut words otherwise
            if len(prompt) >= model.n_ctx or len(prompt) + (s.max_tokens or 0) > model.n_ctx:
                raise PromptTooLong(_overflow(len(prompt), s.max_tokens, model.n_ctx))
            room = model.n_ctx - len(prompt)
            seq = Seq(prompt, s, min(room, s.max_tokens) if s.max_tokens else room, caller)
            engine.submit(seq)
            self._counters.chat_requests += 1
            return model, seq

    async def _answering_model(self) -> Resident:
        swapper, lock = self._swapper, self._lock
        if swapper.current is not None:
            return swapper.current
        if not lock.busy and swapper.asleep is not None:
            swapper.spawn(self._wake(swapper.asleep))
            await asyncio.sleep(0)  # let the wake-up take the load lock
        if not lock.busy and swapper.current is None:
            raise self._refused(NoModelLoaded("No model is loaded"))
        if self.waiting_for_model >= self.queue_limit:
            raise self._refused(
                QueueFull(f"Too many requests are waiting for the model ({self.queue_limit})")
            )
        self.waiting_for_model += 1
        try:
            async with asyncio.timeout(self.load_wait):
                while swapper.current is None and lock.busy:
                    await lock.ended()
                    await asyncio.sleep(0)
        except TimeoutError:
            raise self._refused(
                ModelWaitTimeout(
                    f"the model is still loading after {self.load_wait:.0f} s; try again shortly",
                    retry_after=RETRY_AFTER,
                )
            ) from None
        finally:
            self.waiting_for_model -= 1
        if swapper.current is None:
            why = lock.last_error or "the load did not finish"
            raise self._refused(NoModelLoaded(f"No model is loaded ({why})"))
        return swapper.current

    def _refused(self, error: Exception) -> Exception:
        self._counters.chat_rejected += 1
        return error


def _overflow(prompt: int, max_tokens: int | None, n_ctx: int) -> str:
    """context_length_exceeded in words, with the numbers (as OpenAI gives them)."""
    if not max_tokens:
        return f"the prompt has {prompt} tokens; the context window holds {n_ctx}"
    return (
        f"the prompt has {prompt} tokens and max_tokens asks for {max_tokens} more: "
        f"{prompt + max_tokens} tokens, but the context window holds {n_ctx}. Shorten the "
        f"messages or lower max_tokens (leave it out to answer in what room is left)"
    )


def _encode(model: Resident, conversation: Conversation, s: Sampling) -> list[int]:
    """The prompt's token ids (on the engine's thread: tokenizing a long history takes time)."""
    lo = model.engine.loaded
    bad = [t for t in s.logit_bias if not 0 <= int(t) < lo.n_vocab]
    if bad:
        raise InvalidRequest(
            f"logit_bias: token {bad[0]} is not in the vocabulary ({lo.n_vocab})",
            param="logit_bias",
        )
    return encode_llama2(conversation, lambda t: tokenize(lo.vocab, t), lo.bos, lo.eos)
