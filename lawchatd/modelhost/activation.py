"""Which model answers: loads a downloaded variant through the ModelHost and remembers it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from lawchatd.downloads.catalog import ModelSpec
from lawchatd.modelhost import LoadInProgress, ModelHost
from lawchatd.state.store import Store

log = logging.getLogger(__name__)
ACTIVE_KEY = "active_variant"


class Activator:
    def __init__(self, host: ModelHost, store: Store) -> None:
        self._host = host
        self._store = store
        self._task: asyncio.Task | None = None

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def begin(self, spec: ModelSpec, path: Path) -> asyncio.Task:
        """Start loading at once, or raise LoadInProgress while another load runs."""
        if self.busy:
            raise LoadInProgress("another model is being loaded; try again when it is ready")
        self._task = asyncio.create_task(self._load(spec, path), name=f"load {spec.variant}")
        return self._task

    async def activate(self, spec: ModelSpec, path: Path) -> None:
        """Load after any load already running (a finished download must not be dropped)."""
        while True:
            while self.busy:
                assert self._task is not None
                await asyncio.wait({self._task})
            # A chat request may be waking a model that keep-alive unloaded (a load the
            # host started itself): wait for it too, then load ours.
            await self._host.settled()
            try:
                await asyncio.shield(self.begin(spec, path))
                return
            except LoadInProgress:
                continue  # another load slipped in between: wait for it as well

    async def _load(self, spec: ModelSpec, path: Path) -> None:
        await self._host.load(spec.variant, path)
        await self._store.set_meta(ACTIVE_KEY, spec.variant)

    async def restore(self, spec_for: dict[str, tuple[ModelSpec, Path]]) -> None:
        """Load the variant that was active at the last stop, if it is still on disk."""
        variant = await self._store.get_meta(ACTIVE_KEY)
        if variant is None:
            return
        if variant not in spec_for:
            log.warning("the active model %s is no longer downloaded; none is loaded", variant)
            return
        try:
            await self.activate(*spec_for[variant])
        except Exception as exc:
            log.error("could not load the active model %s again: %s", variant, exc)
