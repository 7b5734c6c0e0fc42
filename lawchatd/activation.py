"""Which downloaded variant is active, remembered across restarts (the store's meta table).

Loading itself, and "a model is loading", belong to the ModelHost and its one load lock;
this module only picks the file and remembers the choice. It sits above both the model host
and the downloads (it reads the catalog's specs and the store), so neither imports the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lawchatd.config import ALWAYS, EMPTY, NEVER
from lawchatd.downloads.catalog import ModelSpec
from lawchatd.modelhost import ModelHost
from lawchatd.state.store import Store

log = logging.getLogger(__name__)
ACTIVE_KEY = "active_variant"


class Activator:
    def __init__(self, host: ModelHost, store: Store, autoload: str = ALWAYS) -> None:
        self._host = host
        self._store = store
        self.autoload = autoload

    async def load(self, spec: ModelSpec, path: Path) -> None:
        """A user's load (`POST /models/load`): LoadInProgress while another load runs or
        waits its turn."""
        await self._host.load(spec.variant, path)
        await self._store.set_meta(ACTIVE_KEY, spec.variant)

    async def activate(self, spec: ModelSpec, path: Path) -> None:
        """Load after the loads before it (a finished download must not be dropped)."""
        await self._host.load(spec.variant, path, wait=True)
        await self._store.set_meta(ACTIVE_KEY, spec.variant)

    def on_download(self, variant: str) -> str:
        """What a verified download of ``variant`` will do, in words (the dashboard shows it
        before the download starts): "load" or "keep"."""
        if self.autoload == NEVER:
            return "keep"
        if self.autoload == EMPTY and self._host.snapshot().variant not in (None, variant):
            return "keep"
        return "load"

    async def downloaded(self, spec: ModelSpec, path: Path) -> None:
        """A download was verified: load it as LAWCHATD_AUTOLOAD says."""
        if self.on_download(spec.variant) == "load":
            await self.activate(spec, path)
        else:
            log.info("%s is downloaded; not loaded (LAWCHATD_AUTOLOAD=%s)", spec.variant,
                     self.autoload)  # fmt: skip

    async def unload(self) -> None:
        """Unload the answering model (its requests finish first); none loads at the next start."""
        await self._host.unload()
        await self._store.set_meta(ACTIVE_KEY, None)

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
