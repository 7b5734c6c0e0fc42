"""The loaded llama model: hot swap, a queue of chat requests, answers as plain data
(`chat_types`; the OpenAI shapes are built in `web/chat.py`).

Threads: every llama call (load, generate, close) runs in a worker thread; all state below
lives on the event loop thread and changes only there, so no thread locks guard it.
A llama context serves one request at a time: requests take the model *slot* (an
asyncio.Lock) in FIFO order, at most ``queue_limit`` of them waiting. A request takes the
current model when it gets the slot and keeps it until its worker thread ends, so a swap
never cuts one short; slot and model are handed back only when that thread has really
stopped (also when the request was cancelled), so two generations never share a context.

Swap: the new model loads in a thread while the old one keeps answering; the switch is a
single assignment on the loop thread (no await between reading and writing ``_current``,
so nothing can interleave); the old model is closed and freed in a thread as soon as no
request holds it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama, LlamaGrammar, StoppingCriteriaList
from llama_cpp.llama_grammar import JSON_GBNF

from lawchatd.chat_types import Chunk, Completion, FinishReason, Message, Sampling, Usage
from lawchatd.prompt import encode_llama2, llama2_turns

log = logging.getLogger(__name__)
llama_log = logging.getLogger("lawchatd.llama")

Event = dict[str, Any]
_DEFAULT = Sampling()


class ModelHostError(Exception):
    """Base of the model host's errors; the message is fit to show a user."""


class ModelLoadError(ModelHostError):
    """The model file could not be loaded (the old model, if any, still serves)."""


class LoadInProgress(ModelHostError):
    """Another load is running (HTTP 409)."""


class QueueFull(ModelHostError):
    """Too many chat requests are waiting for the model (HTTP 429)."""


class NoModelLoaded(ModelHostError):
    """No model is loaded (HTTP 503)."""


class PromptTooLong(ModelHostError):
    """The prompt does not fit the context window (HTTP 400)."""


# --- llama.cpp's own log -------------------------------------------------------------
# llama-cpp-python's verbose=False silences llama.cpp by pointing the process's fds 1 and
# 2 at /dev/null while a model loads, which would also swallow the daemon's own log lines
# from other threads. So we load with verbose=True and route llama.cpp's log callback into
# `logging` instead; ERROR lines are also kept per thread to explain a failed load.
# The few lines llama-cpp-python itself prints on a verbose load (system info, metadata)
# are caught from sys.stderr (logging holds its own stream object, so it is unaffected).

_LLAMA_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml.h; info/debug chatter -> DEBUG
_llama_log_state = threading.local()
_llama_log_installed = False
_load_lock = threading.Lock()


@llama_cpp.llama_log_callback
def _on_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    if level == 5:  # GGML_LOG_LEVEL_CONT: continues the previous line
        py_level = getattr(_llama_log_state, "last_level", logging.DEBUG)
    else:
        py_level = _LLAMA_LEVELS.get(level, logging.DEBUG)
    _llama_log_state.last_level = py_level
    msg = text.decode("utf-8", "replace").rstrip()
    if not msg:
        return
    errors = getattr(_llama_log_state, "errors", None)
    if py_level >= logging.ERROR and errors is not None:
        errors.append(msg)
    llama_log.log(py_level, "%s", msg)


def _install_llama_log() -> None:
    global _llama_log_installed
    if not _llama_log_installed:
        llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))
        _llama_log_installed = True


# --- worker-thread side --------------------------------------------------------------


def _open_llama(path: Path, kwargs: Mapping[str, Any]) -> Llama:
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    _install_llama_log()
    _llama_log_state.errors = []
    printed = io.StringIO()
    try:
        # The lock keeps a late (abandoned) load and a new one from swapping sys.stderr
        # under each other.
        with _load_lock, contextlib.redirect_stderr(printed):
            llama = Llama(model_path=str(path), verbose=True, **kwargs)
    except Exception as exc:
        reason = _llama_log_state.errors[0] if _llama_log_state.errors else str(exc)
        reason = reason.rpartition("error loading model: ")[2]  # drop llama.cpp's prefix
        raise ModelLoadError(f"could not load {path.name}: {reason}") from exc
    finally:
        _llama_log_state.errors = None
        llama_log.debug("%s", printed.getvalue().rstrip())
    llama.verbose = False  # no per-request timing / cache chatter on stderr
    return llama


def _open_measured(path: Path, kwargs: Mapping[str, Any]) -> tuple[Llama, int]:
    """The model and the bytes it holds: weights and context state (the KV cache)."""
    llama = _open_llama(path, kwargs)
    size = llama_cpp.llama_model_size(llama.model) + llama_cpp.llama_state_get_size(llama.ctx)
    return llama, size


def _free_llama(llama: Llama) -> None:
    llama.close()  # frees the weights and the KV cache now, whoever still holds the object
    del llama
    gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    """Give freed heap back to the OS. llama.cpp's buffers are malloc'ed from the arena of
    whichever worker thread made them; without a trim each swap leaves RSS a few MB up."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(None).malloc_trim(0)


def _prompt_tokens(llama: Llama, messages: Sequence[Message]) -> list[int]:
    prompt = encode_llama2(
        messages,
        lambda text: llama.tokenize(text.encode(), add_bos=False, special=False),
        llama.token_bos(),
        llama.token_eos(),
    )
    if len(prompt) >= llama.n_ctx():
        raise PromptTooLong(
            f"the prompt has {len(prompt)} tokens; the context window holds {llama.n_ctx()}"
        )
    return prompt


def _check_logit_bias(llama: Llama, bias: Mapping[int, float]) -> None:
    n_vocab = llama.n_vocab()
    bad = sorted(t for t in bias if not 0 <= t < n_vocab)
    if bad:
        raise ValueError(
            f"logit_bias: token {bad[0]} is not in the model's vocabulary (0-{n_vocab - 1})"
        )


class _Limit:
    """llama-cpp's stopping criterion: exact max_tokens, and a cancelled request's stop.

    llama-cpp checks its own max_tokens only once the text ends on a whole UTF-8 character,
    so alone it may return more tokens than asked for; here the token after the last one
    allowed is refused, and the unfinished character is dropped from the text.
    llama-cpp calls this after every sampled token with the tokens evaluated so far (one
    more each time), and once more after its loop with the same count: that call is no token.
    """

    def __init__(self, cap: int, cancel: threading.Event) -> None:
        self.cap = cap
        self.cancel = cancel
        self.kept = 0  # tokens llama-cpp was allowed to keep (an end-of-generation one too)
        self.capped = False
        self._seen = -1

    def __call__(self, input_ids: Any, _logits: Any) -> bool:
        if len(input_ids) == self._seen:
            return self.capped or self.cancel.is_set()
        self._seen = len(input_ids)
        if self.cancel.is_set():
            return True
        if self.kept >= self.cap:
            self.capped = True
            return True
        self.kept += 1
        return False


class _StopScan:
    """Finds the stop strings in streamed text, holding back what may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to send, and whether a stop string ended the answer."""
        buf = self.held + text
        found = [buf.index(s) for s in self.stops if s in buf]
        if found:
            self.held = ""
            return buf[: min(found)], True
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0
        )
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


@dataclass(frozen=True)
class _Done:
    finish_reason: FinishReason
    usage: Usage


def _generate(
    llama: Llama,
    messages: Sequence[Message],
    s: Sampling,
    cancel: threading.Event,
    put: Callable[[Any], None],
) -> None:
    """Hand the answer's text to the loop piece by piece, then a _Done (or an exception),
    then _END. Stop strings are matched here, not by llama-cpp, so that an end-of-generation
    token can be told from a stop string and the token count is exact either way."""
    try:
        prompt = _prompt_tokens(llama, messages)
        _check_logit_bias(llama, s.logit_bias)
        room = llama.n_ctx() - len(prompt)
        limit = _Limit(min(room, s.max_tokens or room), cancel)
        scan = _StopScan(s.stop)
        kwargs: dict[str, Any] = {
            "prompt": prompt,  # a token list: llama-cpp adds no BOS of its own
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "logit_bias": dict(s.logit_bias) or None,
            "grammar": LlamaGrammar.from_string(JSON_GBNF) if s.json_object else None,
            "stopping_criteria": StoppingCriteriaList([limit]),
        }
        finish: str | None = None
        with contextlib.closing(llama.create_completion(stream=True, **kwargs)) as pieces:
            for piece in pieces:
                choice = piece["choices"][0]
                text, hit = scan.feed(choice["text"])
                if text:
                    put(text)
                if hit:
                    finish = "stop-string"
                    break
                finish = choice["finish_reason"] or finish
                if cancel.is_set():
                    break
        if finish != "stop-string" and (tail := scan.flush()):
            put(tail)
        put(_done(len(prompt), limit, finish))
    except Exception as exc:
        put(exc)
    finally:
        put(_END)


def _done(n_prompt: int, limit: _Limit, finish: str | None) -> _Done:
    if finish == "stop-string":
        return _Done("stop", Usage(n_prompt, limit.kept))
    if limit.capped or finish == "length" or finish is None:
        return _Done("length", Usage(n_prompt, limit.kept))
    # llama-cpp's "stop" without a stop string: the model ended; its end token is no output.
    return _Done("stop", Usage(n_prompt, max(limit.kept - 1, 0)))


_END = object()


# --- loop side -------------------------------------------------------------------------


@dataclass(eq=False)
class _Model:
    variant: str
    path: Path
    llama: Llama | None  # None once closed
    n_ctx: int
    loaded_at: datetime
    memory_usage: int  # bytes: weights and context state
    users: int = 0  # requests holding this model (0 or 1: there is one slot)
    retired: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Run:
    """One chat request that holds the slot and a model."""

    model: _Model
    cancel: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Any] | None = None
    started: float = field(default_factory=time.monotonic)


class ModelHost:
    def __init__(
        self,
        *,
        n_ctx: int | None,
        n_threads: int | None,
        n_gpu_layers: int | None,
        queue_limit: int = 16,
        on_event: Callable[[Event], None] = lambda e: None,
    ) -> None:
        given = {"n_ctx": n_ctx, "n_threads": n_threads, "n_gpu_layers": n_gpu_layers}
        self._llama_kwargs = {k: v for k, v in given.items() if v is not None}
        self.queue_limit = queue_limit
        self._on_event = on_event
        self._current: _Model | None = None
        self._loading: str | None = None
        self._epoch = 0  # bumped by close(): a load that started before it is dropped
        self._slot = asyncio.Lock()
        self._waiting = 0
        self._active: set[_Run] = set()
        self._retired: set[_Model] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # One thread for generation: the slot already serialises requests; this is a backstop.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lawchatd-chat")
        self.error: str | None = None  # the last load's error, cleared by the next load
        # Counters for /metrics.
        self.load_seconds: float | None = None  # of the last successful load
        self.loads_total = 0  # attempted (LoadInProgress refusals not counted)
        self.load_failures = 0
        self.chat_requests = 0  # accepted (got past the queue check)
        self.chat_rejected = 0  # QueueFull / NoModelLoaded
        self.chat_failures = 0
        self.chat_cancelled = 0
        self.chat_seconds = 0.0  # model time of accepted requests: slot taken to thread done
        self.completion_tokens = 0  # exact for chat(); one per content delta for streams

    # --- state ---

    @property
    def model_variant(self) -> str | None:
        return self._current.variant if self._current else None

    @property
    def context_length(self) -> int | None:
        """n_ctx of the model now answering (the route caps max_tokens with it)."""
        return self._current.n_ctx if self._current else None

    @property
    def loaded_timestamp(self) -> int | None:
        """Unix time the answering model was loaded (OpenAI's `created`)."""
        return int(self._current.loaded_at.timestamp()) if self._current else None

    @property
    def queue_waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._slot.locked()

    def status(self) -> dict[str, Any]:
        """The body of GET /models/loaded.

        status: "loading" while a load runs; else "ready" when a model answers (also after
        a failed load, with ``error`` set: the old model still serves); else "error" when
        the last load failed; else "none".
        """
        cur = self._current
        if self._loading is not None:
            status = "loading"
        elif cur is not None:
            status = "ready"
        elif self.error is not None:
            status = "error"
        else:
            status = "none"
        return {
            "model_variant": cur.variant if cur else None,
            "path": str(cur.path) if cur else None,
            "status": status,
            "loaded_at": cur.loaded_at.isoformat(timespec="seconds") if cur else None,
            "error": self.error,
            "loading_variant": self._loading,
            "n_ctx": cur.n_ctx if cur else None,
            "memory_usage": cur.memory_usage if cur else 0,
        }

    # --- load / swap / close ---

    async def load(self, variant: str, path: Path) -> None:
        """Load ``path`` and make it the answering model; raises ModelLoadError or
        LoadInProgress. The model that served before keeps serving until the switch."""
        if self._loading is not None:
            raise LoadInProgress(f"Model {self._loading} is already loading")
        path = Path(path)
        epoch = self._epoch
        self._loading, self.error = variant, None
        self.loads_total += 1
        self._emit("loading", variant, path)
        started = time.monotonic()
        try:
            llama, memory = await self._open_in_thread(path)
            if epoch != self._epoch:
                self._spawn(asyncio.to_thread(_free_llama, llama))
                raise ModelLoadError("the model host was closed while the model loaded")
        except ModelLoadError as exc:
            self._loading = None
            self._load_failed(variant, path, str(exc), time.monotonic() - started)
            raise
        finally:
            self._loading = None
        seconds = time.monotonic() - started
        self._swap(_Model(variant, path, llama, llama.n_ctx(), datetime.now(UTC), memory))
        self.load_seconds = seconds
        log.info("model %s loaded from %s in %.2f s", variant, path, seconds)
        self._emit("loaded", variant, path, load_seconds=seconds)

    async def close(self) -> None:
        """Unload: stop running generations, close every model, wait until they are freed."""
        self._epoch += 1
        for run in self._active:
            run.cancel.set()
        if self._current is not None:
            old, self._current = self._current, None
            self._retire(old)
        closing = [m.closed.wait() for m in self._retired]
        if closing:
            await asyncio.gather(*closing)

    async def unload(self) -> str | None:
        """Stop answering: the model is closed and freed once the requests running on it
        end (waited for here). Returns the variant unloaded, None if none was loaded."""
        model, self._current = self._current, None
        if model is None:
            return None
        self._retire(model)
        await model.closed.wait()
        self._emit("unloaded", model.variant, model.path)
        return model.variant

    async def _open_in_thread(self, path: Path) -> tuple[Llama, int]:
        fut = asyncio.ensure_future(asyncio.to_thread(_open_measured, path, self._llama_kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread cannot be stopped; free what it loads once it is done.
            fut.add_done_callback(self._free_orphan)
            raise

    def _free_orphan(self, fut: asyncio.Future[tuple[Llama, int]]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._spawn(asyncio.to_thread(_free_llama, fut.result()[0]))

    def _load_failed(self, variant: str, path: Path, error: str, seconds: float) -> None:
        self.error = error
        self.load_failures += 1
        log.error("loading model %s failed: %s", variant, error)
        self._emit("load_failed", variant, path, error=error, load_seconds=seconds)

    def _swap(self, new: _Model) -> None:
        old, self._current = self._current, new
        if old is not None:
            self._retire(old)

    def _retire(self, model: _Model) -> None:
        model.retired = True
        self._retired.add(model)
        if model.users == 0:
            self._close_model(model)

    def _close_model(self, model: _Model) -> None:
        llama, model.llama = model.llama, None
        self._spawn(self._free_model(model, llama))

    async def _free_model(self, model: _Model, llama: Llama | None) -> None:
        try:
            if llama is not None:
                await asyncio.to_thread(_free_llama, llama)
            log.info("model %s closed and freed", model.variant)
        finally:
            model.closed.set()
            self._retired.discard(model)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(
        self,
        event: str,
        variant: str,
        path: Path,
        *,
        error: str | None = None,
        load_seconds: float | None = None,
    ) -> None:
        payload = {
            "type": "model",
            "event": event,
            "model_variant": variant,
            "path": str(path),
            "error": error,
            "load_seconds": load_seconds,
        }
        try:
            self._on_event(payload)
        except Exception:
            log.exception("model event handler failed")

    # --- chat ---

    async def chat(self, messages: Sequence[Message], sampling: Sampling = _DEFAULT) -> Completion:
        """One whole answer. Raises NoModelLoaded, QueueFull, PromptTooLong, ValueError (a
        conversation Llama-2 cannot take, a logit_bias token outside the vocabulary)."""
        pieces: list[str] = []
        async with contextlib.aclosing(self.chat_stream(messages, sampling)) as chunks:
            async for chunk in chunks:
                pieces.append(chunk.text)
        assert chunk.finish_reason is not None and chunk.usage is not None
        return Completion(chunk.model_variant, "".join(pieces), chunk.finish_reason, chunk.usage)

    async def chat_stream(
        self, messages: Sequence[Message], sampling: Sampling = _DEFAULT
    ) -> AsyncIterator[Chunk]:
        """Pieces of text, then a last chunk with finish_reason and usage.

        Errors found before the first token (NoModelLoaded, QueueFull, ValueError,
        PromptTooLong) surface at the first ``__anext__``, so a route can
        still answer with a status. Closing the iterator early (``aclose()``, or cancelling
        the task consuming it) stops generation at the next token.
        """
        llama2_turns(messages)  # a bad conversation fails now, not after queueing
        async with self._turn() as run:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self._submit(run, _generate, messages, sampling, run.cancel, self._putter(queue))
            variant = run.model.variant
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, _Done):
                    self.completion_tokens += item.usage.completion_tokens
                    yield Chunk(variant, "", item.finish_reason, item.usage)
                else:
                    yield Chunk(variant, item)

    def _putter(self, queue: asyncio.Queue[Any]) -> Callable[[Any], None]:
        loop = asyncio.get_running_loop()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(queue.put_nowait, item)

        return put

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[_Run]:
        """Wait for the slot and take the current model. Both are given back when the
        worker thread ends (see _submit), or on leaving if no thread was started."""
        if self._current is None:
            self.chat_rejected += 1
            raise NoModelLoaded("No model is loaded")
        would_wait = self._slot.locked() or self._waiting > 0
        if would_wait and self._waiting >= self.queue_limit:
            self.chat_rejected += 1
            raise QueueFull(f"Too many requests are waiting for the model ({self.queue_limit})")
        self._waiting += 1
        try:
            await self._slot.acquire()  # FIFO; a cancelled waiter leaves the queue
        finally:
            self._waiting -= 1
        model = self._current
        if model is None:  # unloaded while we waited
            self._slot.release()
            self.chat_rejected += 1
            raise NoModelLoaded("No model is loaded")
        self.chat_requests += 1
        model.users += 1
        run = _Run(model)
        self._active.add(run)
        try:
            yield run
        except (asyncio.CancelledError, GeneratorExit):
            self.chat_cancelled += 1
            raise
        except Exception:
            self.chat_failures += 1
            raise
        finally:
            run.cancel.set()  # a generation still running stops at its next token
            self._active.discard(run)
            if run.future is None:
                self._release(run)

    def _submit(self, run: _Run, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(llama, *args)`` in the chat thread. The slot and the model are released
        when it returns, not when the request ends: a cancelled request's thread may still
        be finishing its token, and a stream's reader may still be draining the queue."""
        loop = asyncio.get_running_loop()
        run.future = self._pool.submit(fn, run.model.llama, *args)
        run.future.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._release, run))
        return run.future

    def _release(self, run: _Run) -> None:
        self.chat_seconds += time.monotonic() - run.started
        model = run.model
        model.users -= 1
        self._slot.release()
        if model.retired and model.users == 0 and model.llama is not None:
            self._close_model(model)


__all__ = [
    "LoadInProgress",
    "ModelHost",
    "ModelHostError",
    "ModelLoadError",
    "NoModelLoaded",
    "PromptTooLong",
    "QueueFull",
]
