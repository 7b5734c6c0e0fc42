"""`/ws/progress` as a browser would use it, and the hub's no-backlog rule."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from lawchatd.state.progress import ProgressHub
from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror

PROGRESS_FIELDS = {
    "model_variant", "progress", "status", "error", "total_size", "downloaded_size", "speed", "eta",
}  # fmt: skip


async def test_snapshot_then_monotonic_progress_then_final_status(
    daemon: Daemon, mirror: Mirror, models
):
    mirror.faults.rate = 4_000_000
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{daemon.url}/ws/progress?token={API_KEY}") as ws,
    ):
        snapshot = await ws.receive_json(timeout=5)
        assert snapshot["type"] == "snapshot"
        assert snapshot.keys() >= PROGRESS_FIELDS
        assert snapshot["status"] == "idle"
        assert set(snapshot["available_models"]) == set(models)
        assert snapshot["loaded_model"]["status"] == "none"

        await daemon.post("/models/download", {"model_variant": "tiny-a"})
        messages = []
        while True:
            message = await ws.receive_json(timeout=10)
            messages.append((time.monotonic(), message))
            if message["type"] == "progress" and message["status"] != "downloading":
                break

    progress = [m for _, m in messages if m["type"] == "progress"]
    assert all(m.keys() >= PROGRESS_FIELDS for m in progress)
    sizes = [m["downloaded_size"] for m in progress]
    assert sizes == sorted(sizes), "progress went backwards"
    assert progress[-1]["status"] == "completed" and progress[-1]["progress"] == 100
    phases = [m["phase"] for m in progress]
    for phase in ("resolving", "downloading", "verifying"):
        assert phase in phases
    assert any(m["speed"] for m in progress), "speed was never reported"
    # At most about 10 messages a second (plus one per phase change).
    seconds = messages[-1][0] - messages[0][0]
    assert len(progress) <= 12 * seconds + len(set(phases)) + 2


async def test_websocket_needs_the_key(daemon: Daemon):
    async with aiohttp.ClientSession() as session:
        for url in (f"{daemon.url}/ws/progress", f"{daemon.url}/ws/progress?token=wrong"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(url)
            assert caught.value.status == 401
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with session.ws_connect(f"{daemon.url}/ws/progress", headers=headers) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "snapshot"


async def test_a_client_that_does_not_read_gets_the_latest_state_not_a_backlog():
    hub = ProgressHub()
    slow = hub.subscribe()
    for done in range(10_000):
        hub.publish({"type": "progress", "downloaded_size": done, "status": "downloading"})
    hub.publish({"type": "model", "event": "loaded", "model_variant": "x"})
    hub.publish({"type": "progress", "downloaded_size": 10_000, "status": "completed"})
    batch = [published.message for published in await slow.next_batch()]
    assert batch == [
        {"type": "model", "event": "loaded", "model_variant": "x"},
        {"type": "progress", "downloaded_size": 10_000, "status": "completed"},
    ]
    hub.unsubscribe(slow)
    assert hub.client_count == 0


async def test_repeated_identical_states_are_sent_once():
    hub = ProgressHub()
    client = hub.subscribe()
    state = {"type": "progress", "downloaded_size": 5, "status": "downloading"}
    hub.publish(state)
    assert [p.message for p in await client.next_batch()] == [state]
    hub.publish(dict(state))
    hub.publish({**state, "downloaded_size": 6})
    (published,) = await client.next_batch()
    assert published.message == {**state, "downloaded_size": 6}
    assert json.loads(published.text) == published.message
