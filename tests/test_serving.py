"""Download, hot-swap and chat end to end: the daemon, the mirror, real tiny llama models."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp

from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror

CHAT = {"messages": [{"role": "user", "content": "What is a tort?"}], "max_tokens": 8}


def autoload_daemon(make_daemon, **env) -> Daemon:
    return make_daemon(LAWCHATD_AUTOLOAD="true", **env)


async def download_and_wait(daemon: Daemon, variant: str) -> dict:
    status, reply = await daemon.post("/models/download", {"model_variant": variant})
    assert status == 200, reply
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    return done


async def chat(daemon: Daemon, body: dict = CHAT) -> tuple[int, dict]:
    return await daemon.post("/v1/chat/completions", body)


async def test_no_model_is_503_in_words(daemon: Daemon):
    status, reply = await chat(daemon)
    assert status == 503 and reply["error"]["message"] == "No model is loaded"
    assert (await daemon.get("/v1/models"))["data"] == []
    loaded = await daemon.get("/models/loaded")
    assert loaded["status"] == "none" and loaded["model_variant"] is None


async def test_a_download_with_autoload_ends_ready_and_answers(make_daemon, mirror: Mirror):
    daemon = await autoload_daemon(make_daemon).start()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{daemon.url}/ws/progress?token={API_KEY}") as ws,
    ):
        await download_and_wait(daemon, "tiny-small")
        seen = []
        while not any(m.get("event") == "loaded" for m in seen):
            seen.append(await ws.receive_json(timeout=10))
    phases = [m.get("phase") for m in seen if m["type"] == "progress"]
    assert "loading" in phases  # the finished download was being swapped in
    events = [m["event"] for m in seen if m["type"] == "model"]
    assert events[-1] == "loaded"
    loaded = await daemon.get("/models/loaded")
    assert loaded["status"] == "ready" and loaded["model_variant"] == "tiny-small"
    assert loaded["path"].endswith("tiny-small.gguf") and loaded["loaded_at"]
    assert (await daemon.get("/v1/models"))["data"][0]["id"] == "tiny-small"

    status, answer = await chat(daemon)
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and answer["model"] == "tiny-small"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0


async def test_streaming_chat_ends_with_done(make_daemon, mirror: Mirror):
    daemon = await autoload_daemon(make_daemon).start()
    await download_and_wait(daemon, "tiny-small")
    session = await daemon.session()
    async with session.post(
        daemon.url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line.decode().strip() async for line in resp.content if line.strip()]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


async def chat_without_pause(daemon: Daemon, stop: asyncio.Event, results: list[int]) -> None:
    async with aiohttp.ClientSession(headers=daemon.headers()) as session:
        while not stop.is_set():
            async with session.post(daemon.url + "/v1/chat/completions", json=CHAT) as resp:
                await resp.read()
                results.append(resp.status)


async def answered_more_than(results: list[int], count: int, timeout: float = 30) -> None:
    """Wait for answers rather than a fixed time: a loaded machine answers later, not never."""
    async with asyncio.timeout(timeout):
        while len(results) <= count:
            await asyncio.sleep(0.02)


async def test_a_second_download_swaps_under_chat_traffic_without_one_failure(
    make_daemon, mirror: Mirror
):
    daemon = await autoload_daemon(make_daemon, LAWCHATD_CHAT_QUEUE_LIMIT="64").start()
    await download_and_wait(daemon, "tiny-small")
    stop, results = asyncio.Event(), []
    clients = [asyncio.create_task(chat_without_pause(daemon, stop, results)) for _ in range(4)]
    await answered_more_than(results, 0)  # traffic is flowing before the swap
    before = len(results)
    await download_and_wait(daemon, "tiny-a")
    while (await daemon.get("/models/loaded"))["model_variant"] != "tiny-a":
        await asyncio.sleep(0.05)
    await answered_more_than(results, len(results))  # and after it
    stop.set()
    await asyncio.gather(*clients)
    assert before > 0 and len(results) > before
    assert set(results) == {200}, f"{results.count(200)} of {len(results)} succeeded"
    status, answer = await chat(daemon)
    assert status == 200 and answer["model"] == "tiny-a"


async def test_broken_tensors_fail_to_load_and_the_old_model_keeps_answering(
    make_daemon, mirror: Mirror
):
    daemon = await autoload_daemon(make_daemon).start()
    await download_and_wait(daemon, "tiny-small")
    await download_and_wait(daemon, "tiny-broken")  # the bytes are right; the tensors are not
    loaded = await daemon.get("/models/loaded")
    assert loaded["model_variant"] == "tiny-small" and loaded["status"] == "ready"
    assert "tiny-broken" in loaded["error"]
    status, answer = await chat(daemon)
    assert status == 200 and answer["model"] == "tiny-small"

    status, reply = await daemon.post("/models/load", {"model_variant": "tiny-broken"})
    assert status == 500 and "Loading tiny-broken failed" in reply["detail"]
    assert (await daemon.get("/models/loaded"))["model_variant"] == "tiny-small"


async def test_load_route_errors(daemon: Daemon, mirror: Mirror):
    status, reply = await daemon.post("/models/load", {"model_variant": "tiny-a"})
    assert status == 404 and "not downloaded" in reply["detail"]
    status, reply = await daemon.post("/models/load", {"model_variant": "nope"})
    assert status == 400
    status, reply = await daemon.post("/models/load", {"model_variant": 3})
    assert status == 422


async def test_load_route_swaps_and_a_restart_loads_the_active_model_again(
    make_daemon, mirror: Mirror
):
    first = await make_daemon().start()  # autoload off: loading is asked for
    await download_and_wait(first, "tiny-small")
    await download_and_wait(first, "tiny-b")
    status, reply = await first.post("/models/load", {"model_variant": "tiny-b"})
    assert status == 200 and reply["model_variant"] == "tiny-b" and reply["status"] == "loaded"
    assert reply["loaded_model"]["status"] == "ready"
    assert first.kill(signal.SIGTERM) == 0

    second = await make_daemon().start()
    for _ in range(200):
        loaded = await second.get("/models/loaded")
        if loaded["status"] == "ready":
            break
        await asyncio.sleep(0.05)
    assert loaded["model_variant"] == "tiny-b"
    status, answer = await chat(second)
    assert status == 200 and answer["model"] == "tiny-b"


async def test_serving_settings_reach_the_daemon_and_keep_alive_unloads_and_reloads(
    make_daemon, mirror: Mirror
):
    daemon = await autoload_daemon(
        make_daemon, LAWCHATD_N_CTX="", LAWCHATD_PARALLEL="3", LAWCHATD_KEEP_ALIVE="0.5"
    ).start()
    await download_and_wait(daemon, "tiny-small")
    while (await daemon.get("/models/loaded"))["status"] != "ready":
        await asyncio.sleep(0.05)
    loaded = await daemon.get("/models/loaded")
    assert loaded["n_ctx"] == 2048  # the GGUF's context_length: LAWCHATD_N_CTX is unset
    assert loaded["parallel"] == 3 and loaded["memory_usage"] > 0 and not loaded["idle"]
    assert (await daemon.get("/v1/models"))["data"][0]["n_ctx"] == 2048
    for _ in range(200):  # no chat for 0.5 s: unloaded, its name kept
        loaded = await daemon.get("/models/loaded")
        if loaded["idle"]:
            break
        await asyncio.sleep(0.05)
    assert loaded["idle"] and loaded["memory_usage"] == 0
    assert (loaded["status"], loaded["model_variant"]) == ("ready", "tiny-small")
    status, answer = await chat(daemon)  # loads it again and waits for it
    assert status == 200 and answer["model"] == "tiny-small"
    assert "unloaded after" in daemon.log()
