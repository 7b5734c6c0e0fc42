"""The bandwidth cap wired into the engine: the real daemon, a real mirror, 100 MB."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.models import REPO, ModelFile, make_big_gguf, sha256_of
from lawchatd.testing.models import write_catalog as write_catalog_file

SIZE = 100_000_000
TOLERANCE = 0.05  # the "within 5 % of the cap"


@pytest.fixture
async def big_hub(tmp_path: Path) -> AsyncIterator[tuple[Mirror, ModelFile]]:
    root = tmp_path / "hub100"
    (root / REPO).mkdir(parents=True)
    path = make_big_gguf(root / REPO / "hundred.gguf", SIZE)
    model = ModelFile("hundred", path.name, SIZE, sha256_of(path))
    server = await start_mirror(root)
    yield server, model
    await server.runner.cleanup()


async def pace(daemon: Daemon, start: int, end: int) -> float:
    """Bytes/s between the moments the download passed `start` and `end` bytes."""
    first = await daemon.wait_progress(lambda p: p["downloaded_size"] >= start, timeout=60)
    began = time.monotonic()
    last = await daemon.wait_progress(lambda p: p["downloaded_size"] >= end, timeout=60)
    return (last["downloaded_size"] - first["downloaded_size"]) / (time.monotonic() - began)


async def test_the_cap_holds_and_a_put_changes_the_pace(
    make_daemon, catalog: Path, big_hub: tuple[Mirror, ModelFile]
) -> None:
    hub, model = big_hub
    write_catalog_file(catalog, {"hundred": model})
    daemon = await make_daemon(
        hub=hub, LAWCHATD_MAX_RATE="20MB", LAWCHATD_CONNECTIONS="4", LAWCHATD_STALL_TIMEOUT="10"
    ).start()
    status, reply = await daemon.post("/models/download", {"model_variant": "hundred"})
    assert status == 200, reply
    first = await pace(daemon, 5_000_000, 45_000_000)
    assert abs(first / 20e6 - 1) < TOLERANCE, first
    assert (await daemon.get("/models/download-progress"))["max_rate"] == 20_000_000

    status, reply = await daemon.request(
        "PUT", "/downloads/bandwidth", json={"max_rate": 10_000_000}
    )
    assert status == 200, reply
    now = (await daemon.get("/models/download-progress"))["downloaded_size"]
    second = await pace(daemon, now + 2_000_000, SIZE)
    assert abs(second / 10e6 - 1) < TOLERANCE, second
    done = await daemon.wait_done()
    assert (done["status"], done["max_rate"]) == ("completed", 10_000_000), done
