"""The answering model, put together: one load lock, the models in memory, keep-alive, chat
admission and the counters, each in a module of its own; this one loads, reports and closes.

All state lives on the event loop thread; llama.cpp runs in each engine's own thread.
The host knows nothing of HTTP: `snapshot()` is plain data, the web layer words it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lawchatd.modelhost import memory
from lawchatd.modelhost.admission import Admission
from lawchatd.modelhost.chat_types import Chunk, Completion, Conversation, Sampling, gathered
from lawchatd.modelhost.counters import Counters
from lawchatd.modelhost.errors import ModelHostError, ModelLoadError, NoModelLoaded
from lawchatd.modelhost.fairshare import NO_LIMITS, KeyUsage, Limits
from lawchatd.modelhost.keepalive import KeepAlive
from lawchatd.modelhost.load_lock import LoadLock
from lawchatd.modelhost.loader import default_threads
from lawchatd.modelhost.swap import Asleep, Resident, Swapper

log = logging.getLogger(__name__)
Event = dict[str, Any]


def default_parallel() -> int:
    """Slots: each costs only a row of logits (the KV cache is shared). On 2 cores, where
    decoding is compute-bound, 4 slots still give four users 1.33-1.50x the tokens/s of one and
    half the p95 time to first token (bench/README.md): 2 per core, at most 4."""
    return max(1, min(4, 2 * default_threads()))


@dataclass(frozen=True)
class Snapshot:
    """Where the host stands, as plain data. ``variant``/``path`` name the model that answers
    or sleeps (keep-alive unloaded it; a request wakes it); ``loaded_at`` and
    ``memory_usage`` are the answering one's."""

    variant: str | None
    path: Path | None
    loaded_at: datetime | None
    asleep: bool
    loading: str | None  # the variant being loaded
    error: str | None  # why the last load failed, until a load succeeds
    n_ctx: int | None
    memory_usage: int
    parallel: int


class ModelHost:
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
        self.parallel = parallel or default_parallel()
        self.counters = Counters()
        self._on_event = on_event
        self._lock = LoadLock()
        self._swap = Swapper(
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            parallel=self.parallel,
            memory_max=memory_max,
            on_unloaded=lambda variant, path: self._emit("unloaded", variant, path),
        )
        self._keep_alive = KeepAlive(keep_alive, self._swap, self._lock, self._slept)
        self.admission = Admission(
            self._swap,
            self._lock,
            self._keep_alive,
            self.counters,
            self._wake,
            parallel=self.parallel,
            queue_limit=queue_limit,
            load_wait=load_wait,
        )

    # --- state ---

    @property
    def model_variant(self) -> str | None:
        cur = self._swap.current
        return cur.variant if cur else None

    @property
    def context_length(self) -> int | None:
        """n_ctx of the answering model (or of the one asleep, which a request wakes)."""
        named = self._swap.current or self._swap.asleep
        return named.n_ctx if named else None

    @property
    def queue_waiting(self) -> int:
        cur = self._swap.current
        return (len(cur.engine.waiting) if cur else 0) + self.admission.waiting_for_model

    @property
    def generating(self) -> bool:
        """The answering model's engine has requests in its slots."""
        cur = self._swap.current
        return bool(cur and cur.engine.active)

    def snapshot(self) -> Snapshot:
        cur, asleep = self._swap.current, self._swap.asleep
        named = cur or asleep
        return Snapshot(
            variant=named.variant if named else None,
            path=named.path if named else None,
            loaded_at=cur.loaded_at if cur else None,
            asleep=cur is None and asleep is not None,
            loading=self._lock.variant,
            error=self._lock.last_error,
            n_ctx=self.context_length,
            memory_usage=cur.cost.total if cur else 0,
            parallel=self.parallel,
        )

    # --- chat (admission.py) ---

    async def chat(
        self,
        conversation: Conversation,
        sampling: Sampling,
        caller: str = "",
        limits: Limits = NO_LIMITS,
    ) -> Completion:
        return await gathered(self.chat_stream(conversation, sampling, caller, limits))

    def chat_stream(
        self,
        conversation: Conversation,
        sampling: Sampling,
        caller: str = "",
        limits: Limits = NO_LIMITS,
    ) -> AsyncIterator[Chunk]:
        """``caller`` (a key's name) shares the slots round robin with other callers and is
        held to ``limits``; its usage is counted under that name (``usage``)."""
        return self.admission.chat_stream(conversation, sampling, caller, limits)

    @property
    def usage(self) -> dict[str, KeyUsage]:
        """Chat usage per caller since the start."""
        return self.admission.fair.usage

    # --- load / unload ---

    async def load(self, variant: str, path: Path, *, wait: bool = False) -> None:
        """Make ``path`` the answering model. While another load runs or waits, raise
        LoadInProgress (``wait=False``: a user asked and may try again) or load after it
        (``wait=True``). Raises ModelLoadError (ModelTooLarge with the numbers); after a
        failure the old model still answers."""
        async with self._lock.hold(variant, wait=wait):
            await self._load_held(variant, Path(path))

    def no_loads(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While held no model loads (LoadInProgress at once if one runs or waits): a model's
        file is deleted under it, so no load opens a file half removed."""
        return self._lock.hold(None, wait=False)

    async def _wake(self, asleep: Asleep) -> None:
        """A chat request found the model asleep: load it again, unless a load that came
        first already replaced it."""
        with contextlib.suppress(ModelHostError):  # logged by _load_held; waiters see it
            async with self._lock.hold(asleep.variant, wait=True):
                if self._swap.asleep is asleep:
                    await self._load_held(asleep.variant, asleep.path)

    async def _load_held(self, variant: str, path: Path) -> None:
        counters = self.counters
        self._lock.last_error = None
        counters.loads_total += 1
        self._emit("loading", variant, path)
        started = time.monotonic()
        try:
            model = await self._swap.swap_in(variant, path)
        except ModelLoadError as exc:
            self._lock.last_error = str(exc)
            counters.load_failures += 1
            log.error("loading model %s failed: %s", variant, exc)
            self._emit("load_failed", variant, path, error=str(exc))
            raise
        counters.load_seconds = time.monotonic() - started
        log.info(
            "model %s loaded from %s in %.2f s: n_ctx %d, %d slots, about %s",
            variant, path, counters.load_seconds, model.n_ctx, self.parallel,
            memory.gib(model.cost.total),
        )  # fmt: skip
        self._emit("loaded", variant, path, load_seconds=counters.load_seconds)
        self._keep_alive.arm()

    async def unload(self) -> None:
        """Unload the answering model (it finishes its requests) and wait until freed."""
        named = self._swap.current or self._swap.asleep
        self._swap.asleep = None
        await self._swap.unload_all()
        if named is not None:
            self._emit("unloaded", named.variant, named.path)

    async def close(self) -> None:
        """Stop: running requests fail with NoModelLoaded, every model is freed."""
        self._keep_alive.stop()
        await self._swap.close(NoModelLoaded("the model was unloaded: the daemon is stopping"))

    # --- events (/ws/progress) ---

    def _slept(self, model: Resident) -> None:
        self._emit("unloaded", model.variant, model.path)

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
