"""The answering model: memory-aware hot swap, waiting requests, keep-alive, chat.

All state lives on the event loop thread; llama.cpp runs in each engine's own thread.

Swap: the new model's cost is known before loading (GGUF header: weights, KV cache for the
context, compute buffers). When it fits beside the old one, it loads while the old one keeps
answering and the switch is one assignment. When it does not, the old model finishes the
requests it has, is freed, and only then the new one loads; requests that arrive meanwhile
wait for it (up to ``load_wait`` seconds, then ModelWaitTimeout: 503 + Retry-After). When it
would not fit even alone, the load is refused with the numbers (ModelTooLarge).

Keep-alive: ``keep_alive`` seconds without chat unloads the model; it stays "asleep" (its
name still shown) and the next request loads it again and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lawchatd.modelhost import memory
from lawchatd.modelhost.chat import ChatMixin
from lawchatd.modelhost.engine import Engine
from lawchatd.modelhost.errors import (
    LoadInProgress,
    ModelHostError,
    ModelLoadError,
    ModelTooLarge,
    NoModelLoaded,
)
from lawchatd.modelhost.ggufmeta import GGUFMetaError, ModelShape, read_shape
from lawchatd.modelhost.loader import default_threads, free_model, open_model

log = logging.getLogger(__name__)
Event = dict[str, Any]


def default_parallel() -> int:
    """Slots: each costs only a row of logits (the KV cache is shared). On 2 cores, where
    decoding is compute-bound, 4 slots still give four users 1.33-1.50x the tokens/s of one and
    half the p95 time to first token (bench/README.md): 2 per core, at most 4."""
    return max(1, min(4, 2 * default_threads()))


@dataclass(eq=False)
class _Model:
    variant: str
    path: Path
    engine: Engine
    n_ctx: int
    cost: memory.Cost
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class _Asleep:
    variant: str
    path: Path
    n_ctx: int


class ModelHost(ChatMixin):
    def __init__(
        self,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        parallel: int | None = None,
        keep_alive: float | None = None,
        load_wait: float = 120.0,
        memory_max: int | None = None,
        queue_limit: int = 16,
        on_event: Callable[[Event], None] = lambda e: None,
    ) -> None:
        self._n_ctx = n_ctx or None  # 0 / None: the model's trained context
        self._n_threads = n_threads
        self._n_gpu_layers = n_gpu_layers
        self.parallel = parallel or default_parallel()
        self.keep_alive = keep_alive
        self.load_wait = load_wait
        self.memory_max = memory_max
        self.queue_limit = queue_limit
        self._on_event = on_event
        self._current: _Model | None = None
        self._asleep: _Asleep | None = None
        self._loading: str | None = None
        self._settled = asyncio.Event()  # set whenever no load runs
        self._settled.set()
        self._retiring: set[_Model] = set()
        self._waiting_for_model = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.error: str | None = None
        # Counters for /metrics.
        self.load_seconds: float | None = None
        self.loads_total = 0
        self.load_failures = 0
        self.chat_requests = 0
        self.chat_rejected = 0
        self.chat_failures = 0
        self.chat_cancelled = 0
        self.chat_seconds = 0.0
        self.completion_tokens = 0

    # --- state ---

    @property
    def model_variant(self) -> str | None:
        return self._current.variant if self._current else None

    @property
    def context_length(self) -> int | None:
        """n_ctx of the answering model (or of the one asleep, which a request wakes)."""
        if self._current:
            return self._current.n_ctx
        return self._asleep.n_ctx if self._asleep else None

    @property
    def loaded_timestamp(self) -> int | None:
        return int(self._current.loaded_at.timestamp()) if self._current else None

    @property
    def queue_waiting(self) -> int:
        engine_wait = len(self._current.engine.waiting) if self._current else 0
        return engine_wait + self._waiting_for_model

    @property
    def busy(self) -> bool:
        return bool(self._current and self._current.engine.active)

    def status(self) -> dict[str, Any]:
        """GET /models/loaded. status: "loading" while a load runs, else "ready" when a
        model answers or sleeps (``idle``: unloaded by keep-alive, woken by a request),
        else "error" after a failed load, else "none"."""
        cur, asleep = self._current, self._asleep
        if self._loading is not None:
            status = "loading"
        elif cur is not None or asleep is not None:
            status = "ready"
        elif self.error is not None:
            status = "error"
        else:
            status = "none"
        named = cur or asleep
        return {
            "model_variant": named.variant if named else None,
            "path": str(named.path) if named else None,
            "status": status,
            "loaded_at": cur.loaded_at.isoformat(timespec="seconds") if cur else None,
            "error": self.error,
            "loading_variant": self._loading,
            "n_ctx": self.context_length,
            "memory_usage": cur.cost.total if cur else 0,
            "parallel": self.parallel,
            "idle": cur is None and asleep is not None,
        }

    # --- load / swap / unload ---

    async def settled(self) -> None:
        """Return once no load runs (also one a chat request started to wake a model)."""
        await self._settled.wait()

    async def load(self, variant: str, path: Path) -> None:
        """Make ``path`` the answering model. Raises ModelLoadError (ModelTooLarge with the
        numbers) or LoadInProgress; after a failure the old model still answers."""
        if self._loading is not None:
            raise LoadInProgress(f"Model {self._loading} is already loading")
        path = Path(path)
        self._loading, self.error, self._asleep = variant, None, None
        self._settled.clear()
        self.loads_total += 1
        self._emit("loading", variant, path)
        started = time.monotonic()
        try:
            model = await self._load(variant, path)
        except ModelLoadError as exc:
            self.error = str(exc)
            self.load_failures += 1
            log.error("loading model %s failed: %s", variant, exc)
            self._emit("load_failed", variant, path, error=str(exc))
            raise
        finally:
            self._loading = None
            self._settled.set()
        self.load_seconds = time.monotonic() - started
        log.info(
            "model %s loaded from %s in %.2f s: n_ctx %d, %d slots, about %s",
            variant, path, self.load_seconds, model.n_ctx, self.parallel,
            memory.gib(model.cost.total),
        )  # fmt: skip
        self._emit("loaded", variant, path, load_seconds=self.load_seconds)
        self._arm_idle()

    async def _load(self, variant: str, path: Path) -> _Model:
        try:
            shape = await asyncio.to_thread(read_shape, path)
        except FileNotFoundError:
            raise ModelLoadError(f"model file not found: {path}") from None
        except (OSError, GGUFMetaError) as exc:
            raise ModelLoadError(f"could not load {path.name}: {exc}") from None
        old = self._current
        held = sum(m.cost.total for m in self._retiring) + (old.cost.total if old else 0)
        room = memory.room(self.memory_max)
        n_ctx, cost = self._plan_context(variant, shape, room.available + held)
        unload_first = cost.total > room.available and bool(old or self._retiring)
        if unload_first:
            log.warning(
                "%s needs %s but only %s is free beside the loaded model: unloading first; "
                "chat requests wait for the new model",
                variant, memory.gib(cost.total), memory.gib(room.available),
            )  # fmt: skip
            await self._unload_all()
        try:
            loaded = await self._open(path, n_ctx)
        except ModelLoadError:
            if unload_first and old is not None:
                await self._restore(old)
            raise
        if loaded is None:
            raise ModelLoadError("the model host was closed while the model loaded")
        new = _Model(variant, path, Engine(loaded), loaded.n_ctx, cost)
        self._current = new
        if old is not None and not unload_first:
            self._retire(old)
        return new

    async def _restore(self, old: _Model) -> None:
        """The new model failed after the old one was unloaded: bring the old one back
        (the requests waiting for a model get it)."""
        try:
            loaded = await self._open(old.path, old.n_ctx)
        except ModelLoadError as exc:
            log.error("could not load %s back after the failed swap: %s", old.variant, exc)
            return
        if loaded is not None:
            self._current = _Model(old.variant, old.path, Engine(loaded), loaded.n_ctx, old.cost)
            log.warning("model %s loaded back after the failed swap", old.variant)

    def _plan_context(self, variant: str, shape: ModelShape, room: int) -> tuple[int, memory.Cost]:
        """The context to load with and its cost; ModelTooLarge when nothing fits."""
        n_ctx = self._n_ctx
        if n_ctx is None:
            n_ctx = memory.fit_context(shape, room, self.parallel)
            if 0 < n_ctx < shape.n_ctx_train:
                log.warning(
                    "%s: context lowered from %d to %d tokens: the KV cache for %d would not "
                    "fit in %s", variant, shape.n_ctx_train, n_ctx, shape.n_ctx_train,
                    memory.gib(room),
                )  # fmt: skip
            n_ctx = n_ctx or memory.MIN_CTX
        cost = memory.model_cost(shape, n_ctx, self.parallel)
        if cost.total > room:
            raise ModelTooLarge(
                f"{variant} does not fit in memory: it needs {memory.gib(cost.total)} "
                f"(weights {memory.gib(cost.weights)}, KV cache for {n_ctx} tokens "
                f"{memory.gib(cost.kv_cache)}, compute {memory.gib(cost.compute)}) and the "
                f"daemon may use {memory.gib(room)}",
                needed=cost.total,
                available=room,
            )
        return n_ctx, cost

    async def _open(self, path: Path, n_ctx: int) -> Any:
        kwargs = {
            "n_ctx": n_ctx,
            "n_seq": self.parallel,
            "n_threads": self._n_threads,
            "n_gpu_layers": self._n_gpu_layers,
        }
        fut = asyncio.ensure_future(asyncio.to_thread(open_model, path, **kwargs))
        try:
            loaded = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._free_orphan)  # the thread cannot be stopped
            raise
        if self._closed:
            self._free_orphan(fut)
            return None
        return loaded

    def _free_orphan(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._spawn(asyncio.to_thread(free_model, fut.result()))

    def _retire(self, model: _Model) -> None:
        """No new requests for ``model``; it answers what it has, then is freed."""
        self._retiring.add(model)
        model.engine.retire()
        self._spawn(self._forget_when_closed(model))

    async def _forget_when_closed(self, model: _Model) -> None:
        await model.engine.closed.wait()
        self._retiring.discard(model)
        log.info("model %s closed and freed", model.variant)

    async def _unload_all(self) -> None:
        if self._current is not None:
            self._retire(self._current)
            self._current = None
        retiring = list(self._retiring)
        if retiring:
            await asyncio.gather(*(m.engine.closed.wait() for m in retiring))

    async def unload(self) -> None:
        """Unload the answering model (it finishes its requests) and wait until freed."""
        self._asleep = None
        await self._unload_all()

    async def close(self) -> None:
        """Stop: running requests fail with NoModelLoaded, every model is freed."""
        self._closed = True
        if self._idle_timer:
            self._idle_timer.cancel()
        for model in [self._current, *self._retiring]:
            if model is not None:
                model.engine.abort(NoModelLoaded("the model was unloaded: the daemon is stopping"))
        self._asleep = None
        await self._unload_all()

    # --- keep-alive ---

    def _arm_idle(self) -> None:
        if self.keep_alive is None or self._closed:
            return
        if self._idle_timer:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(self.keep_alive, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        cur = self._current
        if cur is None or self._loading is not None:
            return
        idle_for = time.monotonic() - cur.engine.last_used
        if cur.engine.load or idle_for < self.keep_alive:
            self._arm_idle()
            return
        log.info("model %s unloaded after %.0f s without chat", cur.variant, idle_for)
        self._asleep = _Asleep(cur.variant, cur.path, cur.n_ctx)
        self._current = None
        self._retire(cur)
        self._emit("unloaded", cur.variant, cur.path)

    async def _wake(self, asleep: _Asleep) -> None:
        with contextlib.suppress(ModelHostError):  # logged by load(); waiters see error
            await self.load(asleep.variant, asleep.path)

    # --- helpers ---

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event: str, variant: str, path: Path, **extra: Any) -> None:
        payload = {
            "type": "model",
            "event": event,
            "model_variant": variant,
            "path": str(path),
            "error": extra.get("error"),
            "load_seconds": extra.get("load_seconds"),
        }
        try:
            self._on_event(payload)
        except Exception:
            log.exception("model event handler failed")
