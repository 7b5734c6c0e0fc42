"""Fixtures: a Hub-compatible mirror with the test models, and daemons pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lawchatd.testing.daemon import Daemon, daemon_env
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.models import ModelFile, build_models, write_catalog


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="session")
def models(hub_root: Path) -> dict[str, ModelFile]:
    return build_models(hub_root)


@pytest.fixture
def catalog(tmp_path: Path, models: dict[str, ModelFile]) -> Path:
    return write_catalog(tmp_path / "catalog.toml", models)


@pytest.fixture
async def mirror(hub_root: Path, models: dict[str, ModelFile]) -> AsyncIterator[Mirror]:
    server = await start_mirror(hub_root)
    yield server
    await server.runner.cleanup()


@pytest.fixture
async def make_daemon(
    tmp_path: Path, mirror: Mirror, catalog: Path
) -> AsyncIterator[Callable[..., Daemon]]:
    """Build (not start) daemons; every one is stopped at the end of the test."""
    made: list[Daemon] = []

    def make(data_dir: Path | None = None, hub: Mirror | None = None, **env: str) -> Daemon:
        data = data_dir or tmp_path / "data"
        daemon = Daemon(
            data,
            daemon_env(data, (hub or mirror).url, catalog, **env),
            tmp_path / f"daemon-{len(made)}.log",
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        await daemon.close()


@pytest.fixture
async def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return await make_daemon().start()
