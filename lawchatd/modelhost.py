"""The loaded llama model: hot swap, a queue of chat requests, OpenAI-shaped answers.

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
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama, StoppingCriteriaList

from lawchatd.prompt import encode_llama2, llama2_turns

log = logging.getLogger(__name__)
llama_log = logging.getLogger("lawchatd.llama")

Event = dict[str, Any]
Message = Mapping[str, Any]


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


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None  # None: up to the end of the context window
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


def _completion_args(
    llama: Llama, messages: Sequence[Message], s: Sampling, cancel: threading.Event
) -> dict[str, Any]:
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
    return {
        "prompt": prompt,  # a token list: llama-cpp adds no BOS of its own
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stop": list(s.stop),
        "seed": s.seed,
        "stopping_criteria": StoppingCriteriaList([_stopper(llama, len(prompt), s, cancel)]),
    }


_UTF8_SLACK = 4  # tokens a multi-byte character may need beyond max_tokens


def _stopper(
    llama: Llama, n_prompt: int, s: Sampling, cancel: threading.Event
) -> Callable[[Any, Any], bool]:
    """Called after every sampled token: a cancelled request stops the thread here.

    Also a hard cap: llama-cpp skips its max_tokens check while the text ends in an
    unfinished UTF-8 character, so a model emitting stray bytes >= 0x80 could otherwise
    run to the end of the context window (and beyond, which hangs).
    """
    room = llama.n_ctx() - n_prompt
    cap = min(room, (s.max_tokens or room) + _UTF8_SLACK)
    sampled = 0

    def stop(_input_ids: Any, _logits: Any) -> bool:
        nonlocal sampled
        sampled += 1
        return cancel.is_set() or sampled > cap

    return stop


def _complete(
    llama: Llama, messages: Sequence[Message], s: Sampling, cancel: threading.Event
) -> dict[str, Any]:
    return llama.create_completion(**_completion_args(llama, messages, s, cancel))


def _stream(
    llama: Llama,
    messages: Sequence[Message],
    s: Sampling,
    cancel: threading.Event,
    put: Callable[[Any], None],
) -> None:
    """Hand each completion chunk to the loop; then an exception, if any, and _END."""
    try:
        kwargs = _completion_args(llama, messages, s, cancel)
        with contextlib.closing(llama.create_completion(stream=True, **kwargs)) as chunks:
            for chunk in chunks:
                put(chunk["choices"][0])
                if cancel.is_set():
                    break
    except Exception as exc:
        put(exc)
    finally:
        put(_END)


_END = object()


# --- OpenAI objects --------------------------------------------------------------------


def _openai_head(kind: str, variant: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": variant,
    }


def _chat_completion(variant: str, completion: Mapping[str, Any]) -> dict[str, Any]:
    choice = completion["choices"][0]
    return {
        **_openai_head("chat.completion", variant),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": choice["text"]},
                "finish_reason": choice["finish_reason"] or "stop",
            }
        ],
        "usage": dict(completion["usage"]),
    }


class _ChunkMaker:
    def __init__(self, variant: str) -> None:
        self.head = _openai_head("chat.completion.chunk", variant)

    def __call__(self, delta: dict[str, str], finish_reason: str | None = None) -> dict:
        return {
            **self.head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }


# --- loop side -------------------------------------------------------------------------


@dataclass(eq=False)
class _Model:
    variant: str
    path: Path
    llama: Llama | None  # None once closed
    n_ctx: int
    loaded_at: datetime
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
            llama = await self._open_in_thread(path)
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
        self._swap(_Model(variant, path, llama, llama.n_ctx(), datetime.now(UTC)))
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

    async def _open_in_thread(self, path: Path) -> Llama:
        fut = asyncio.ensure_future(asyncio.to_thread(_open_llama, path, self._llama_kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread cannot be stopped; free what it loads once it is done.
            fut.add_done_callback(self._free_orphan)
            raise

    def _free_orphan(self, fut: asyncio.Future[Llama]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._spawn(asyncio.to_thread(_free_llama, fut.result()))

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

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """One chat.completion. Raises NoModelLoaded, QueueFull, PromptTooLong, ValueError."""
        sampling = _sampling(max_tokens, temperature, top_p, stop, seed)
        llama2_turns(messages)  # a bad conversation fails now, not after queueing
        async with self._turn() as run:
            fut = self._submit(run, _complete, messages, sampling, run.cancel)
            completion = await asyncio.wrap_future(fut)
        self.completion_tokens += completion["usage"]["completion_tokens"]
        return _chat_completion(run.model.variant, completion)

    async def chat_stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.8,
        top_p: float = 0.95,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """chat.completion.chunk objects: role, content deltas, finish_reason.

        Errors found before the first token (NoModelLoaded, QueueFull, ValueError,
        PromptTooLong) surface at the first ``__anext__``, so a route can still answer with
        a status. Closing the iterator early (``aclose()``, or cancelling the task consuming
        it) stops generation at the next token.
        """
        sampling = _sampling(max_tokens, temperature, top_p, stop, seed)
        llama2_turns(messages)
        async with self._turn() as run:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self._submit(run, _stream, messages, sampling, run.cancel, self._putter(queue))
            chunk = _ChunkMaker(run.model.variant)
            item = await queue.get()  # the role chunk waits for the prompt to be accepted
            finished = False
            if not isinstance(item, Exception):
                yield chunk({"role": "assistant", "content": ""})
            while item is not _END:
                if isinstance(item, Exception):
                    raise item
                if item["text"]:
                    self.completion_tokens += 1
                    yield chunk({"content": item["text"]})
                if item["finish_reason"] and not finished:
                    finished = True
                    yield chunk({}, item["finish_reason"])
                item = await queue.get()
            if not finished:
                yield chunk({}, "stop")

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


def _sampling(
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    stop: str | Sequence[str] | None,
    seed: int | None,
) -> Sampling:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return Sampling(max_tokens, temperature, top_p, stops, seed)


__all__ = [
    "LoadInProgress",
    "ModelHost",
    "ModelHostError",
    "ModelLoadError",
    "NoModelLoaded",
    "PromptTooLong",
    "QueueFull",
    "Sampling",
]
