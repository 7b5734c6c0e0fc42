"""The models in memory: the one answering, the one asleep, the ones retiring; hot swap.

The new model's cost is known before loading (GGUF header: weights, KV cache for the
context, compute buffers). When it fits beside the old one, it loads while the old one keeps
answering and the switch is one assignment. When it does not, the old model finishes the
requests it has, is freed, and only then the new one loads (chat requests wait for it, see
admission.py); if the new one then fails, the old one is loaded back. When it would not fit
even alone, the load is refused with the numbers (ModelTooLarge).

The caller holds the load lock (load_lock.py) around `swap_in`: one swap at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lawchatd.modelhost import memory
from lawchatd.modelhost.engine import Engine
from lawchatd.modelhost.errors import ModelLoadError
from lawchatd.modelhost.ggufmeta import GGUFMetaError, read_shape
from lawchatd.modelhost.loader import free_model, open_model

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Resident:
    """A model in memory with its engine."""

    variant: str
    path: Path
    engine: Engine
    n_ctx: int
    cost: memory.Cost
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Asleep:
    """A model keep-alive unloaded: still named, loaded again by the next chat request."""

    variant: str
    path: Path
    n_ctx: int


class Swapper:
    def __init__(
        self,
        *,
        n_ctx: int | None,
        n_threads: int | None,
        n_gpu_layers: int | None,
        parallel: int,
        memory_max: int | None,
        on_unloaded: Callable[[str, Path], None] = lambda variant, path: None,
    ) -> None:
        self._on_unloaded = on_unloaded  # the answering model stopped answering
        self._n_ctx = n_ctx or None  # 0 / None: the model's trained context
        self._n_threads = n_threads
        self._n_gpu_layers = n_gpu_layers
        self._parallel = parallel
        self._memory_max = memory_max
        self.current: Resident | None = None
        self.asleep: Asleep | None = None
        self._retiring: set[Resident] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def swap_in(self, variant: str, path: Path) -> Resident:
        """Make ``path`` the answering model; after a ModelLoadError the old one answers."""
        self.asleep = None
        try:
            shape = await asyncio.to_thread(read_shape, path)
        except FileNotFoundError:
            raise ModelLoadError(f"model file not found: {path}") from None
        except (OSError, GGUFMetaError) as exc:
            raise ModelLoadError(f"could not load {path.name}: {exc}") from None
        old = self.current
        held = sum(m.cost.total for m in self._retiring) + (old.cost.total if old else 0)
        room = memory.room(self._memory_max)
        n_ctx, cost = memory.plan(
            variant, shape, room.available + held, self._n_ctx, self._parallel
        )
        unload_first = cost.total > room.available and bool(old or self._retiring)
        if unload_first:
            log.warning(
                "%s needs %s but only %s is free beside the loaded model: unloading first; "
                "chat requests wait for the new model",
                variant, memory.gib(cost.total), memory.gib(room.available),
            )  # fmt: skip
            await self.unload_all()
            if old is not None:
                self._on_unloaded(old.variant, old.path)
        try:
            loaded = await self._open(path, n_ctx)
        except ModelLoadError:
            if unload_first and old is not None:
                await self._restore(old)
            raise
        if loaded is None:
            raise ModelLoadError("the model host was closed while the model loaded")
        new = Resident(variant, path, Engine(loaded), loaded.n_ctx, cost)
        self.current = new
        if old is not None and not unload_first:
            self._retire(old)
        return new

    async def _restore(self, old: Resident) -> None:
        """The new model failed after the old one was unloaded: bring the old one back
        (the requests waiting for a model get it)."""
        try:
            loaded = await self._open(old.path, old.n_ctx)
        except ModelLoadError as exc:
            log.error("could not load %s back after the failed swap: %s", old.variant, exc)
            return
        if loaded is not None:
            self.current = Resident(old.variant, old.path, Engine(loaded), loaded.n_ctx, old.cost)
            log.warning("model %s loaded back after the failed swap", old.variant)

    async def _open(self, path: Path, n_ctx: int) -> Any:
        kwargs = {
            "n_ctx": n_ctx,
            "n_seq": self._parallel,
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
            self.spawn(asyncio.to_thread(free_model, fut.result()))

    def _retire(self, model: Resident) -> None:
        """No new requests for ``model``; it answers what it has, then is freed."""
        self._retiring.add(model)
        model.engine.retire()
        self.spawn(self._forget_when_closed(model))

    async def _forget_when_closed(self, model: Resident) -> None:
        await model.engine.closed.wait()
        self._retiring.discard(model)
        log.info("model %s closed and freed", model.variant)

    def put_to_sleep(self) -> Resident | None:
        """Keep-alive: retire the answering model but keep its name for a wake-up."""
        cur = self.current
        if cur is not None:
            self.asleep = Asleep(cur.variant, cur.path, cur.n_ctx)
            self.current = None
            self._retire(cur)
        return cur

    async def unload_all(self) -> None:
        """Retire the answering model and wait until every model is freed."""
        if self.current is not None:
            self._retire(self.current)
            self.current = None
        retiring = list(self._retiring)
        if retiring:
            await asyncio.gather(*(m.engine.closed.wait() for m in retiring))

    async def close(self, error: Exception) -> None:
        """Running requests fail with ``error``; every model is freed, none loads again."""
        self._closed = True
        for model in [self.current, *self._retiring]:
            if model is not None:
                model.engine.abort(error)
        self.asleep = None
        await self.unload_all()

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in a task kept until it ends (asyncio holds only weak references)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
