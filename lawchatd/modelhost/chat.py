"""The chat side of the model host: a request finds the answering model (waiting for one
being loaded, or waking one unloaded by keep-alive), is tokenized and queued in its engine,
and streams its pieces back. Mixed into ModelHost, whose state it reads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from lawchatd.modelhost.chat_types import Chunk, Completion, Message, Sampling
from lawchatd.modelhost.engine import Finish, Seq
from lawchatd.modelhost.errors import (
    InvalidRequest,
    ModelWaitTimeout,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
)
from lawchatd.modelhost.prompt import encode_llama2, llama2_turns
from lawchatd.modelhost.sampling import tokenize

if TYPE_CHECKING:
    from lawchatd.modelhost.host import _Asleep, _Model

RETRY_AFTER = 10  # seconds a client is told to wait after ModelWaitTimeout


class ChatMixin:
    _current: _Model | None
    _asleep: _Asleep | None
    _loading: str | None
    _settled: asyncio.Event
    _waiting_for_model: int
    parallel: int
    queue_limit: int
    load_wait: float
    chat_requests: int
    chat_rejected: int
    chat_failures: int
    chat_cancelled: int
    chat_seconds: float
    completion_tokens: int

    def _spawn(self, coro: Any) -> None: ...
    async def _wake(self, asleep: _Asleep) -> None: ...
    def _arm_idle(self) -> None: ...

    async def chat(self, messages: Sequence[Message], sampling: Sampling) -> Completion:
        text: list[str] = []
        async with contextlib.aclosing(self.chat_stream(messages, sampling)) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                last = chunk
        assert last.finish_reason is not None and last.usage is not None
        return Completion(last.model_variant, "".join(text), last.finish_reason, last.usage)

    async def chat_stream(
        self, messages: Sequence[Message], sampling: Sampling
    ) -> AsyncIterator[Chunk]:
        """Text pieces, the last with finish_reason and usage. Errors before the first
        token (NoModelLoaded, QueueFull, ModelWaitTimeout, PromptTooLong, InvalidRequest) are
        raised at the first ``__anext__``; closing the iterator cancels this request only."""
        llama2_turns(messages)  # a bad conversation fails now
        model, seq = await self._enqueue(messages, sampling)
        started, finished = time.monotonic(), False
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Finish):
                    finished = True
                    self.completion_tokens += item.usage.completion_tokens
                    yield Chunk(model.variant, item.text, item.reason, item.usage)
                    return
                yield Chunk(model.variant, item)
        except (asyncio.CancelledError, GeneratorExit):
            self.chat_cancelled += 1
            raise
        except Exception:
            self.chat_failures += 1
            raise
        finally:
            if not finished:
                model.engine.cancel(seq)
            self.chat_seconds += time.monotonic() - started
            self._arm_idle()

    async def _enqueue(self, messages: Sequence[Message], s: Sampling) -> tuple[_Model, Seq]:
        while True:
            model = await self._answering_model()
            engine = model.engine
            would_wait = engine.load >= self.parallel
            if would_wait and len(engine.waiting) >= self.queue_limit:
                self.chat_rejected += 1
                raise QueueFull(f"Too many requests are waiting for the model ({self.queue_limit})")
            prompt = await engine.run_in_thread(self._encode, model, messages, s)
            if model is not self._current:
                continue  # swapped while we tokenized: the new model may cut words otherwise
            if len(prompt) >= model.n_ctx:
                raise PromptTooLong(
                    f"the prompt has {len(prompt)} tokens; the context window holds {model.n_ctx}"
                )
            room = model.n_ctx - len(prompt)
            seq = Seq(prompt, s, min(room, s.max_tokens) if s.max_tokens else room)
            engine.submit(seq)
            self.chat_requests += 1
            return model, seq

    @staticmethod
    def _encode(model: _Model, messages: Sequence[Message], s: Sampling) -> list[int]:
        lo = model.engine.loaded
        bad = [t for t in s.logit_bias if not 0 <= int(t) < lo.n_vocab]
        if bad:
            raise InvalidRequest(
                f"logit_bias: token {bad[0]} is not in the vocabulary ({lo.n_vocab})",
                param="logit_bias",
            )
        return encode_llama2(messages, lambda t: tokenize(lo.vocab, t), lo.bos, lo.eos)

    async def _answering_model(self) -> _Model:
        if self._current is not None:
            return self._current
        if self._loading is None and self._asleep is not None:
            self._spawn(self._wake(self._asleep))
            await asyncio.sleep(0)  # let the load start (and mark itself loading)
        if self._loading is None and self._current is None:
            self.chat_rejected += 1
            raise NoModelLoaded("No model is loaded")
        if self._waiting_for_model >= self.queue_limit:
            self.chat_rejected += 1
            raise QueueFull(f"Too many requests are waiting for the model ({self.queue_limit})")
        self._waiting_for_model += 1
        try:
            async with asyncio.timeout(self.load_wait):
                while self._current is None and self._loading is not None:
                    await self._settled.wait()
                    await asyncio.sleep(0)
        except TimeoutError:
            self.chat_rejected += 1
            raise ModelWaitTimeout(
                f"the model is still loading after {self.load_wait:.0f} s; try again shortly",
                retry_after=RETRY_AFTER,
            ) from None
        finally:
            self._waiting_for_model -= 1
        if self._current is None:
            self.chat_rejected += 1
            raise NoModelLoaded(f"No model is loaded ({self.error or 'the load did not finish'})")
        return self._current
