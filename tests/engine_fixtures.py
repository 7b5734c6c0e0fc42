"""Fixtures for the engine's tests: a FlakyHub serving the test models, daemons pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lawchatd.testing.daemon import Daemon, daemon_env
from lawchatd.testing.flaky_hub import FlakyHub, start_flaky_hub
from lawchatd.testing.models import REPO, ModelFile, write_catalog


@pytest.fixture
async def flaky(hub_root: Path, models: dict[str, ModelFile]) -> AsyncIterator[FlakyHub]:
    files = {m.filename: (hub_root / REPO / m.filename).read_bytes() for m in models.values()}
    hub = await start_flaky_hub(files)
    yield hub
    await hub.close()


@pytest.fixture
async def flaky_daemon(
    tmp_path: Path, flaky: FlakyHub, models: dict[str, ModelFile]
) -> AsyncIterator[Callable[..., Daemon]]:
    """Build (not start) daemons on one data dir, pointed at the FlakyHub."""
    catalog = write_catalog(tmp_path / "flaky.toml", models)
    made: list[Daemon] = []

    def make(**env: str) -> Daemon:
        data = tmp_path / "data"
        daemon = Daemon(
            data, daemon_env(data, flaky.url, catalog, **env), tmp_path / f"flaky-{len(made)}.log"
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        await daemon.close()
