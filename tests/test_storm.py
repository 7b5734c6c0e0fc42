"""A seeded fault storm against the daemon: every fault kind, bounded, no wrong bytes ever."""

from __future__ import annotations

import time

import pytest

from lawchatd.testing.daemon import Daemon, bytes_received
from lawchatd.testing.flaky_hub import STORM, FlakyHub
from lawchatd.testing.models import ModelFile, sha256_of
from tests import engine_fixtures

flaky, flaky_daemon = engine_fixtures.flaky, engine_fixtures.flaky_daemon  # fixtures


async def ride_out(daemon: Daemon, hub: FlakyHub, model: ModelFile, attempts: int = 6) -> dict:
    """Ask for the download until it completes; no wrong file may ever carry the final name."""
    final = daemon.data_dir / "models" / model.filename
    errors = []
    for _ in range(attempts):
        status, reply = await daemon.post("/models/download", {"model_variant": model.variant})
        assert status == 200, reply
        done = await daemon.wait_done(timeout=60)
        if final.exists():
            assert sha256_of(final) == model.sha256, "wrong bytes under the final name"
        if done["status"] == "completed":
            return {"errors": errors, "final": done}
        errors.append(done["error"])
    raise AssertionError(f"still not downloaded after {attempts} attempts: {errors}")


@pytest.mark.parametrize(("connections", "seed"), [("1", 8), ("4", 9)])
async def test_a_seeded_storm_ends_with_the_right_file_and_bounded_overhead(
    flaky, flaky_daemon, models, connections, seed
):
    model = models["big"]
    flaky.faults.storm = STORM
    flaky.faults.seed = seed
    flaky.faults.cap = 2 << 20
    flaky.faults.__post_init__()
    daemon = await flaky_daemon(
        LAWCHATD_CONNECTIONS=connections, LAWCHATD_MAX_RETRIES="8", LAWCHATD_STALL_TIMEOUT="1"
    ).start()
    started = time.monotonic()
    result = await ride_out(daemon, flaky, model)
    overhead = flaky.bytes_served / model.size - 1
    faults = sum(flaky.faults.injected.values())
    print(
        f"\nstorm: {faults} faults {dict(flaky.faults.injected)} over {len(flaky.requests)} "
        f"requests; the hub sent {overhead:.1%} more than one file per run; {len(result['errors'])} failed "
        f"runs {result['errors']}; {time.monotonic() - started:.1f} s"
    )
    assert faults >= 20
    assert sha256_of(daemon.data_dir / "models" / model.filename) == model.sha256
    # Every run fetched the file once (a corrupt byte deletes it: the next run starts over);
    # beyond that, a fault may cost the daemon at most one read buffer of what it received.
    runs = 1 + len(result["errors"])
    received = await bytes_received(daemon)
    print(f"received and not kept: {received - runs * model.size} bytes")
    assert received - runs * model.size <= faults * (256 << 10)
    if flaky.faults.injected["cdn_404"]:
        assert flaky.resolves > 1  # an expired CDN URL is resolved again
