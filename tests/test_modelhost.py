"""ModelHost and the chat routes against real (tiny) llama models: no mocks of llama.

The real-width versions (memory, swap, slots, keep-alive) are in test_realsize.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lawchatd.activation import ACTIVE_KEY, Activator
from lawchatd.downloads.catalog import ModelSpec
from lawchatd.modelhost import (
    Conversation,
    LoadInProgress,
    ModelHost,
    ModelLoadError,
    NoModelLoaded,
    QueueFull,
)
from lawchatd.modelhost.chat_types import Sampling
from lawchatd.modelhost.load_lock import LoadLock
from lawchatd.modelhost.prompt import encode_llama2, format_llama2, llama2_turns
from lawchatd.state.store import Store
from lawchatd.testing.ggufgen import make_tiny_llama
from lawchatd.web.errors import json_errors
from lawchatd.web.keys import MODEL_HOST
from lawchatd.web.routes.openai import add_chat_routes
from lawchatd.web.views import model_status

log = logging.getLogger(__name__)

USER = [{"role": "user", "content": "What is a tort?"}]
ASK = Conversation.parse(USER)
N_CTX = 2048
LONG = 1500  # tokens: a few seconds of generation, long enough to hold the model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "a": make_tiny_llama(d / "a.gguf", seed=1),
        "b": make_tiny_llama(d / "b.gguf", seed=2),
        "broken": make_tiny_llama(d / "broken.gguf", broken_tensors=True),
    }


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return []


@pytest.fixture
async def host(events: list[dict[str, Any]]) -> AsyncIterator[ModelHost]:
    h = ModelHost(n_ctx=N_CTX, parallel=4, on_event=events.append)
    yield h
    await h.close()


def status_of(host: ModelHost) -> dict[str, Any]:
    """The host's state as `loaded_model` words it (web/views.py)."""
    return model_status(host.snapshot())


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


# --- prompt ------------------------------------------------------------------------------


def test_llama2_prompt_multi_turn() -> None:
    messages = [
        {"role": "system", "content": "You are a lawyer."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is a tort?"},
    ]
    assert format_llama2(messages) == (
        "<s>[INST] <<SYS>>\nYou are a lawyer.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
        "<s>[INST] What is a tort? [/INST]"
    )
    assert format_llama2(USER, bos=False) == "[INST] What is a tort? [/INST]"


def test_encode_puts_bos_eos_as_ids_and_user_text_stays_text() -> None:
    def tokenize(text: str) -> list[int]:
        return [ord(c) for c in text]

    messages = [*USER, {"role": "assistant", "content": "</s>"}, {"role": "user", "content": "x"}]
    ids = encode_llama2(Conversation.parse(messages), tokenize, bos_id=1, eos_id=2)
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
    assert tokenize(" </s> ") == ids[ids.index(2) - 6 : ids.index(2)]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([], "empty"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([*USER, {"role": "assistant", "content": "x"}], "last message"),
        ([*USER, {"role": "system", "content": "x"}, *USER], "system"),
        ([{"role": "assistant", "content": "x"}, *USER], "start with a user"),
        ([{"role": "user", "content": 3}], "string"),
    ],
)
def test_prompt_rejects(messages: list[dict[str, Any]], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        llama2_turns(messages)


# --- load lock ---------------------------------------------------------------------------


async def test_load_lock_refuses_or_queues() -> None:
    lock = LoadLock()
    order: list[str] = []
    release_a, release_b = asyncio.Event(), asyncio.Event()

    async def load(variant: str, wait: bool, until: asyncio.Event | None = None) -> None:
        async with lock.hold(variant, wait=wait):
            order.append(variant)
            if until is not None:
                await until.wait()

    a = asyncio.create_task(load("a", False, release_a))
    await asyncio.sleep(0)
    assert lock.busy and lock.variant == "a"
    with pytest.raises(LoadInProgress):
        lock.hold("refused", wait=False)
    b = asyncio.create_task(load("b", True, release_b))  # a finished download: waits its turn
    ended = asyncio.create_task(lock.ended())
    await asyncio.sleep(0)
    release_a.set()
    await ended
    assert lock.busy, "b follows a: a user's load is still refused"
    with pytest.raises(LoadInProgress):
        lock.hold("refused", wait=False)
    release_b.set()
    await asyncio.gather(a, b)
    assert order == ["a", "b"] and not lock.busy and lock.variant is None


async def test_load_lock_forgets_a_waiter_that_gives_up() -> None:
    lock = LoadLock()
    held = lock.hold("a", wait=False)
    await held.__aenter__()
    waiter = asyncio.create_task(lock.hold("b", wait=True).__aenter__())
    await asyncio.sleep(0)
    ended = asyncio.create_task(lock.ended())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await asyncio.wait_for(ended, 1)  # a chat request waiting for a model looks again
    await held.__aexit__(None, None, None)
    assert not lock.busy


# --- host ----------------------------------------------------------------------------------


async def test_no_load_starts_while_a_file_is_deleted(
    host: ModelHost, models: dict[str, Path]
) -> None:
    # DELETE /models/{variant} checks and unlinks under no_loads(): a load asked meanwhile is
    # refused in words, one waiting (an autoload) runs after; and none may begin mid-load.
    async with host.no_loads():
        assert host.snapshot().loading is None
        with pytest.raises(LoadInProgress):
            await host.load("a", models["a"])
        queued = asyncio.create_task(host.load("a", models["a"], wait=True))
        await asyncio.sleep(0.05)
        assert not queued.done()
    await queued
    assert host.snapshot().variant == "a"


async def test_nothing_loaded(host: ModelHost) -> None:
    assert status_of(host) == {
        "model_variant": None,
        "path": None,
        "status": "none",
        "loaded_at": None,
        "error": None,
        "loading_variant": None,
        "n_ctx": None,
        "memory_usage": 0,
        "parallel": 4,
        "idle": False,
    }
    with pytest.raises(NoModelLoaded):
        await host.chat(ASK, Sampling())
    with pytest.raises(NoModelLoaded):
        await anext(host.chat_stream(ASK, Sampling()))


async def test_load_then_chat(host: ModelHost, events: list[dict], models: dict[str, Path]) -> None:
    await host.load("a", models["a"])
    status = status_of(host)
    assert status["status"] == "ready" and status["model_variant"] == "a"
    assert status["path"] == str(models["a"]) and status["error"] is None
    assert datetime.fromisoformat(status["loaded_at"]).utcoffset().total_seconds() == 0
    assert [e["event"] for e in events] == ["loading", "loaded"]
    assert all(e["type"] == "model" and e["model_variant"] == "a" for e in events)
    assert events[1]["load_seconds"] > 0 and host.counters.load_seconds == events[1]["load_seconds"]

    assert status["n_ctx"] == N_CTX and status["memory_usage"] > 0

    out = await host.chat(ASK, Sampling(max_tokens=8, temperature=0))
    assert out.model_variant == "a" and len(out.text) == 8  # one byte token per character
    assert out.finish_reason == "length" and out.usage.completion_tokens == 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + 8
    c = host.counters
    assert (c.chat_requests, c.chat_failures, c.completion_tokens) == (1, 0, 8)


async def test_swap_under_load(host: ModelHost, models: dict[str, Path]) -> None:
    await host.load("a", models["a"])
    old = host._swap.current
    assert old is not None
    answered: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def chat_loop() -> None:
        while not stop.is_set():
            try:
                answered.append((await host.chat(ASK, Sampling(max_tokens=4))).model_variant)
            except Exception as exc:
                failures.append(exc)
                await asyncio.sleep(0.01)  # an error comes back at once: do not spin

    loops = [asyncio.create_task(chat_loop()) for _ in range(4)]
    await until(lambda: len(answered) >= 8)
    await host.load("b", models["b"])
    await until(lambda: answered.count("b") >= 8)
    stop.set()
    await asyncio.gather(*loops)

    assert failures == []
    assert answered[0] == "a" and answered[-1] == "b"
    assert status_of(host)["model_variant"] == "b" and status_of(host)["status"] == "ready"
    await asyncio.wait_for(old.engine.closed.wait(), 5)  # freed by its own thread


async def test_rss_after_swaps(host: ModelHost, models: dict[str, Path]) -> None:
    """Tiny models move RSS by a few MB at most (mostly the KV cache and allocator arenas),
    so this logs rather than asserts; what matters is that RSS stays flat over swaps."""

    async def swap_to(variant: str) -> int:
        old = host._swap.current
        await host.load(variant, models[variant])
        await host.chat(ASK, Sampling(max_tokens=16))
        if old is not None:
            await asyncio.wait_for(old.engine.closed.wait(), 5)
        return rss_kb()

    before = rss_kb()
    loaded_a = await swap_to("a")
    swapped_b = await swap_to("b")
    after_more = [await swap_to("ab"[i % 2]) for i in range(6)]
    log.info(
        "RSS kB: before %d, A loaded %d (%+d), swapped to B %d (%+d), after 6 more swaps %s",
        before,
        loaded_a,
        loaded_a - before,
        swapped_b,
        swapped_b - loaded_a,
        after_more,
    )


async def test_failed_load_keeps_old_model(
    host: ModelHost, events: list[dict], models: dict[str, Path]
) -> None:
    await host.load("a", models["a"])
    with pytest.raises(ModelLoadError, match="tensor 'blk.1.ffn_down.weight' not found"):
        await host.load("bad", models["broken"])
    failed = events[-1]
    assert failed["event"] == "load_failed" and failed["model_variant"] == "bad"
    assert "ffn_down.weight' not found" in failed["error"] and host.counters.load_failures == 1
    status = status_of(host)
    assert (status["status"], status["model_variant"]) == ("ready", "a")
    assert status["error"] == failed["error"] and status["loading_variant"] is None
    assert (await host.chat(ASK, Sampling(max_tokens=2))).model_variant == "a"

    await host.load("b", models["b"])  # a good load clears the error
    assert status_of(host)["error"] is None


async def test_failed_load_with_nothing_loaded(host: ModelHost, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        await host.load("gone", tmp_path / "missing.gguf")
    status = status_of(host)
    assert status["status"] == "error" and status["model_variant"] is None
    with pytest.raises(NoModelLoaded):
        await host.chat(ASK, Sampling())


async def test_second_load_while_loading(host: ModelHost, models: dict[str, Path]) -> None:
    first = asyncio.create_task(host.load("a", models["a"]))
    await asyncio.sleep(0)
    status = status_of(host)
    assert (status["status"], status["loading_variant"]) == ("loading", "a")
    with pytest.raises(LoadInProgress):
        await host.load("b", models["b"])
    await first
    assert status_of(host)["model_variant"] == "a"


async def test_a_user_load_is_refused_and_a_finished_download_waits_its_turn(
    host: ModelHost, events: list[dict], models: dict[str, Path], tmp_path: Path
) -> None:
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        activator = Activator(host, store)

        def spec(v: str) -> ModelSpec:
            return ModelSpec(v, "org/repo", f"{v}.gguf", models[v].stat().st_size)

        first = asyncio.create_task(activator.load(spec("a"), models["a"]))
        await asyncio.sleep(0)
        with pytest.raises(LoadInProgress):  # POST /models/load: 409, try again
            await activator.load(spec("b"), models["b"])
        await activator.activate(spec("b"), models["b"])  # autoload: after a, then b
        await first
        assert [(e["event"], e["model_variant"]) for e in events] == [
            ("loading", "a"), ("loaded", "a"), ("loading", "b"), ("loaded", "b")
        ]  # fmt: skip
        assert host.model_variant == "b" and await store.get_meta(ACTIVE_KEY) == "b"
        await activator.unload()
        assert host.model_variant is None and await store.get_meta(ACTIVE_KEY) is None
    finally:
        await store.close()


async def test_a_keep_alive_wake_up_holds_the_load_lock(
    events: list[dict], models: dict[str, Path], tmp_path: Path
) -> None:
    # A chat request that wakes a model keep-alive unloaded starts a load nobody asked for:
    # a user's load meanwhile is refused, a finished download's load waits for it.
    host = ModelHost(n_ctx=N_CTX, parallel=2, keep_alive=0.2, on_event=events.append)
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        activator = Activator(host, store)
        await host.load("a", models["a"])
        await until(lambda: status_of(host)["idle"])
        assert events[-1]["event"] == "unloaded" and status_of(host)["model_variant"] == "a"
        waking = asyncio.create_task(host.chat(ASK, Sampling(max_tokens=1)))
        await until(lambda: status_of(host)["status"] == "loading")
        with pytest.raises(LoadInProgress):
            await host.load("b", models["b"])
        spec = ModelSpec("b", "org/repo", "b.gguf", models["b"].stat().st_size)
        await activator.activate(spec, models["b"])
        assert (await waking).model_variant == "a"
        # b answers, or sleeps already when this machine is slow (keep-alive is short here).
        assert status_of(host)["model_variant"] == "b" and host.counters.loads_total == 3
    finally:
        await store.close()
        await host.close()


async def test_stream(host: ModelHost, models: dict[str, Path]) -> None:
    await host.load("a", models["a"])
    greedy = Sampling(max_tokens=12, temperature=0)
    chunks = [c async for c in host.chat_stream(ASK, greedy)]
    assert {c.model_variant for c in chunks} == {"a"}
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 12
    whole = await host.chat(ASK, greedy)
    assert "".join(c.text for c in chunks) == whole.text


@pytest.mark.parametrize("how", ["aclose", "cancel task"])
async def test_abandoned_stream_stops_generation(
    host: ModelHost, models: dict[str, Path], how: str
) -> None:
    await host.load("a", models["a"])
    engine = host._swap.current.engine  # type: ignore[union-attr]
    got: list[Any] = []
    long = Sampling(max_tokens=LONG, temperature=0)

    async def consume() -> None:
        async for chunk in host.chat_stream(ASK, long):
            got.append(chunk)

    if how == "aclose":
        stream = host.chat_stream(ASK, long)
        got += [await anext(stream), await anext(stream)]
        await stream.aclose()
    else:
        task = asyncio.create_task(consume())
        await until(lambda: len(got) >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: not host.generating, timeout=5.0)
    generated = engine.tokens_generated
    assert generated < 200, "generation went on after the reader left"
    out = await host.chat(ASK, Sampling(max_tokens=1))
    assert out.finish_reason == "length" and engine.tokens_generated == generated + 1
    assert host.counters.chat_cancelled == 1


async def test_queue_limit(models: dict[str, Path]) -> None:
    host = ModelHost(n_ctx=N_CTX, parallel=1, queue_limit=2)
    one = Sampling(max_tokens=1)
    try:
        await host.load("a", models["a"])
        holder = host.chat_stream(ASK, Sampling(max_tokens=LONG))
        await anext(holder)  # now generating in the only slot for seconds
        waiters = [asyncio.create_task(host.chat(ASK, one)) for _ in range(2)]
        await until(lambda: host.queue_waiting == 2)
        with pytest.raises(QueueFull):
            await host.chat(ASK, one)
        assert host.counters.chat_rejected == 1

        waiters[0].cancel()  # its client went away: it leaves the queue
        await until(lambda: host.queue_waiting == 1)
        waiters.append(asyncio.create_task(host.chat(ASK, one)))
        await until(lambda: host.queue_waiting == 2)

        await holder.aclose()
        answers = await asyncio.gather(*waiters[1:])
        assert [a.model_variant for a in answers] == ["a", "a"]
        assert waiters[0].cancelled()
    finally:
        await host.close()


async def test_close_unloads(host: ModelHost, models: dict[str, Path]) -> None:
    await host.load("a", models["a"])
    model = host._swap.current
    stream = host.chat_stream(ASK, Sampling(max_tokens=LONG))
    await anext(stream)
    await asyncio.wait_for(host.close(), 2)  # stops the running generation, frees the model
    assert model is not None and model.engine.closed.is_set()
    assert status_of(host)["status"] == "none"
    with pytest.raises(NoModelLoaded, match="stopping"):  # after the text it already had
        async for _chunk in stream:
            pass
    with pytest.raises(NoModelLoaded):
        await host.chat(ASK, Sampling())


# --- HTTP routes ------------------------------------------------------------------------


@pytest.fixture
async def client(host: ModelHost) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[json_errors])
    app[MODEL_HOST] = host
    add_chat_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def sse_events(resp: Any) -> list[Any]:
    """Parse `data:` lines up to `[DONE]`; anything after it fails the test."""
    events: list[Any] = []
    done = False
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            continue
        assert not done, "data after [DONE]"
        assert line.startswith("data: ")
        payload = line.removeprefix("data: ")
        if payload == "[DONE]":
            done = True
        else:
            events.append(json.loads(payload))
    assert done
    return events


async def test_routes_without_model(client: TestClient) -> None:
    resp = await client.get("/v1/models")
    assert await resp.json() == {"object": "list", "data": []}
    resp = await client.post("/v1/chat/completions", json={"messages": USER})
    assert resp.status == 503
    assert (await resp.json())["error"]["message"] == "No model is loaded"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"{}",
        json.dumps({"messages": []}).encode(),
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        json.dumps({"messages": USER, "temperature": 3}).encode(),
        json.dumps({"messages": USER, "max_tokens": 0}).encode(),
        json.dumps({"messages": USER, "stream": "yes"}).encode(),
        json.dumps({"messages": [*USER, {"role": "assistant", "content": "x"}]}).encode(),
    ],
)
async def test_chat_route_rejects_bad_bodies(client: TestClient, body: bytes) -> None:
    # The body is checked before the model: no model needed to get a 422.
    resp = await client.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"


async def test_chat_routes(client: TestClient, host: ModelHost, models: dict[str, Path]) -> None:
    await host.load("a", models["a"])
    resp = await client.get("/v1/models")
    listing = await resp.json()
    assert [m["id"] for m in listing["data"]] == ["a"]
    assert listing["data"][0]["object"] == "model" and listing["data"][0]["owned_by"] == "lawchatd"

    resp = await client.post(
        "/v1/chat/completions", json={"messages": USER, "max_tokens": N_CTX + 1}
    )
    assert resp.status == 400 and "n_ctx" in (await resp.json())["error"]["message"]
    too_long = [{"role": "user", "content": "x" * N_CTX}]
    for stream in (False, True):
        body = {"messages": too_long, "stream": stream}
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 400 and "context window" in (await resp.json())["error"]["message"]

    body = {"messages": USER, "max_tokens": 6, "temperature": 0}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] == 6

    resp = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = await sse_events(resp)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == answer["choices"][0]["message"]["content"]


async def test_stream_client_disconnect_frees_model(
    client: TestClient, host: ModelHost, models: dict[str, Path]
) -> None:
    await host.load("a", models["a"])
    body = {"messages": USER, "max_tokens": LONG, "stream": True}
    resp = await client.post("/v1/chat/completions", json=body)
    await resp.content.readline()  # the role chunk is out: generation runs
    resp.close()  # hang up
    await until(lambda: not host.generating, timeout=5.0)
    assert host.counters.chat_cancelled == 1


async def test_queue_full_route(
    client: TestClient, host: ModelHost, models: dict[str, Path]
) -> None:
    await host.load("a", models["a"])
    host.admission.queue_limit = 0  # no one may wait for a slot
    holders = [host.chat_stream(ASK, Sampling(max_tokens=LONG)) for _ in range(host.parallel)]
    for holder in holders:
        await anext(holder)
    try:
        resp = await client.post("/v1/chat/completions", json={"messages": USER})
        assert resp.status == 429 and "waiting" in (await resp.json())["error"]["message"]
    finally:
        for holder in holders:
            await holder.aclose()
