"""Serving at real size, small: a law-chat-shaped model (4096 wide, 32000 vocab, Q4_0) with
one layer, so each test runs in seconds with the real per-layer memory and kernels.

Memory limits go through ``memory_max``, which the host reads like a cgroup's memory.max;
RSS is sampled from /proc while swaps run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lawchatd.activation import Activator
from lawchatd.downloads.catalog import ModelSpec
from lawchatd.modelhost import (
    Conversation,
    ModelHost,
    ModelLoadError,
    ModelTooLarge,
    ModelWaitTimeout,
)
from lawchatd.modelhost.chat_types import Sampling
from lawchatd.modelhost.engine import MIXED_STEP_ROWS, ROW_TILE, Engine, mixed_step_rows
from lawchatd.modelhost.ggufmeta import read_shape
from lawchatd.modelhost.memory import model_cost, process_rss
from lawchatd.state.store import Store
from lawchatd.testing.lawchat_gguf import LawChatShape, make_lawchat_gguf
from lawchatd.web.errors import json_errors
from lawchatd.web.keys import MODEL_HOST
from lawchatd.web.routes.openai import add_chat_routes
from lawchatd.web.views import model_status

USER = [{"role": "user", "content": "Is a verbal contract binding?"}]
ASK = Conversation.parse(USER)
ONE_LAYER = LawChatShape(n_layer=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lawchat")
    return {
        v: make_lawchat_gguf(d / f"{v}.gguf", ONE_LAYER, seed=s) for v, s in (("a", 1), ("b", 2))
    }


def cost_of(path: Path, n_ctx: int = 4096, n_seq: int = 4) -> int:
    return model_cost(read_shape(path), n_ctx, n_seq).total


def status_of(host: ModelHost) -> dict[str, Any]:
    """The host's state as `loaded_model` words it (web/views.py)."""
    return model_status(host.snapshot())


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


class PeakRSS:
    """Samples this process's RSS every few ms in a thread (the loop may be busy)."""

    def __init__(self) -> None:
        self.peak = process_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, process_rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
async def hosts() -> AsyncIterator[list[ModelHost]]:
    made: list[ModelHost] = []
    yield made
    for h in made:
        await h.close()


async def four_slots(hosts: list[ModelHost], model: Path) -> tuple[ModelHost, Engine]:
    """A host with 4 slots answering ``model``, and its engine."""
    host = ModelHost(parallel=4)
    hosts.append(host)
    await host.load("a", model)
    assert host._swap.current is not None
    return host, host._swap.current.engine


async def test_context_defaults_to_the_gguf_and_is_lowered_to_fit(
    models: dict[str, Path], hosts: list[ModelHost], caplog: pytest.LogCaptureFixture
) -> None:
    full = ModelHost(parallel=4)
    hosts.append(full)
    await full.load("a", models["a"])
    assert status_of(full)["n_ctx"] == 4096 and full.context_length == 4096
    assert status_of(full)["memory_usage"] == cost_of(models["a"])
    await full.unload()

    room = cost_of(models["a"], n_ctx=2048) + (8 << 20)  # KV for 2048 tokens, not 4096
    tight = ModelHost(parallel=4, memory_max=process_rss() + room)
    hosts.append(tight)
    with caplog.at_level(logging.WARNING):
        await tight.load("a", models["a"])
    assert 1024 <= tight.context_length < 4096  # type: ignore[operator]
    assert "context lowered from 4096" in caplog.text
    out = await tight.chat(ASK, Sampling(max_tokens=3))
    assert out.usage.completion_tokens == 3


async def test_a_model_that_cannot_fit_is_refused_with_the_numbers(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    host = ModelHost(parallel=4, memory_max=process_rss() + (100 << 20), n_ctx=4096)
    hosts.append(host)
    with pytest.raises(ModelTooLarge) as refused:
        await host.load("a", models["a"])
    message = str(refused.value)
    assert "does not fit in memory" in message and "KV cache for 4096 tokens" in message
    assert "GiB" in message and refused.value.needed > refused.value.available
    assert status_of(host)["status"] == "error" and status_of(host)["model_variant"] is None


async def chat_traffic(
    host: ModelHost, stop: asyncio.Event, answered: list[str], failures: list[BaseException]
) -> None:
    while not stop.is_set():
        try:
            answered.append((await host.chat(ASK, Sampling(max_tokens=4))).model_variant)
        except Exception as exc:
            failures.append(exc)


async def swap_under_traffic(host: ModelHost, models: dict[str, Path]) -> tuple[int, list, int]:
    """Swap a -> b under 4 chat loops; (peak RSS over the swap, failures, most waiting)."""
    stop, answered, failures = asyncio.Event(), [], []
    loops = [asyncio.create_task(chat_traffic(host, stop, answered, failures)) for _ in range(4)]
    await until(lambda: len(answered) >= 8)
    most_waiting = 0

    async def watch() -> None:
        nonlocal most_waiting
        while not stop.is_set():
            most_waiting = max(most_waiting, host.admission.waiting_for_model)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    with PeakRSS() as rss:
        await host.load("b", models["b"])
        await until(lambda: answered.count("b") >= 8)
    stop.set()
    await asyncio.gather(*loops, watcher)
    return rss.peak, failures, most_waiting


async def test_swap_that_does_not_fit_twice_unloads_first_and_requests_wait(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    base = process_rss()
    host = ModelHost(parallel=4, memory_max=base + int(1.5 * cost_of(models["a"])))
    hosts.append(host)
    await host.load("a", models["a"])
    await host.chat(ASK, Sampling(max_tokens=2))
    one_model = process_rss() - base
    peak, failures, most_waiting = await swap_under_traffic(host, models)
    assert failures == []
    assert most_waiting > 0, "no request waited: the swap did not unload first"
    assert peak - base < 1.3 * one_model, f"peak {peak - base} vs one model {one_model}"
    assert status_of(host)["model_variant"] == "b"


async def test_swap_with_room_for_both_keeps_answering_without_wait(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    host = ModelHost(parallel=4)
    hosts.append(host)
    await host.load("a", models["a"])
    _peak, failures, most_waiting = await swap_under_traffic(host, models)
    assert failures == [] and most_waiting == 0


async def test_a_request_that_waits_too_long_gets_503_with_retry_after(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    base = process_rss()
    host = ModelHost(parallel=4, memory_max=base + int(1.5 * cost_of(models["a"])))
    host.admission.load_wait = 0.001
    hosts.append(host)
    await host.load("a", models["a"])
    app = web.Application(middlewares=[json_errors])
    app[MODEL_HOST] = host
    add_chat_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        swap = asyncio.create_task(host.load("b", models["b"]))
        await until(lambda: host._swap.current is None)  # unloading a first
        with pytest.raises(ModelWaitTimeout):
            await host.chat(ASK, Sampling(max_tokens=1))
        resp = await client.post("/v1/chat/completions", json={"messages": USER})
        assert resp.status == 503 and resp.headers["Retry-After"] == "10"
        assert "still loading" in (await resp.json())["error"]["message"]
        await swap
        host.admission.load_wait = 30
        resp = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
        assert resp.status == 200 and (await resp.json())["model"] == "b"


async def test_parallel_slots_answer_interleaved_streams(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    host, engine = await four_slots(hosts, models["a"])
    arrivals: list[int] = []

    async def stream(i: int) -> int:
        tokens = 0
        async for chunk in host.chat_stream(ASK, Sampling(max_tokens=12, seed=i)):
            arrivals.append(i)
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return tokens

    steps_before = engine.steps
    assert await asyncio.gather(*(stream(i) for i in range(4))) == [12] * 4
    firsts = [arrivals.index(i) for i in range(4)]
    lasts = [len(arrivals) - 1 - arrivals[::-1].index(i) for i in range(4)]
    assert max(firsts) < min(lasts), f"streams did not interleave: {arrivals}"
    assert engine.steps - steps_before < 2 * 12, "tokens were not decoded in shared steps"


async def test_a_long_prompt_is_fed_in_tiles_beside_a_stream_that_keeps_going(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    host, engine = await four_slots(hosts, models["a"])
    plan_of = engine._plan
    steps: list[tuple[int, int]] = []  # (decode rows, prompt rows) of each step

    def recorded() -> list:
        plan = plan_of()
        decode = sum(1 for p in plan if p.seq.generated or p.seq.n_past >= len(p.seq.prompt))
        steps.append((decode, sum(len(p.tokens) for p in plan) - decode))
        return plan

    engine._plan = recorded
    order: list[str] = []

    async def stream(name: str, messages: list[dict], n: int) -> None:
        async for _ in host.chat_stream(
            Conversation.parse(messages), Sampling(max_tokens=n, temperature=0)
        ):
            order.append(name)

    short = asyncio.create_task(stream("short", USER, 60))
    await until(lambda: "short" in order)
    brief = [{"role": "user", "content": "The lessee shall keep the premises in repair. " * 40}]
    asked_at = len(order)
    await stream("long", brief, 2)
    await short
    mixed = [(d, p) for d, p in steps if d and p]
    assert len(mixed) >= 5, f"the long prompt was not fed beside the stream: {steps}"
    assert all(d + p <= MIXED_STEP_ROWS for d, p in mixed)  # 128-token slices: 129 rows
    assert all((d + p) % ROW_TILE == 0 for d, p in mixed[:-1]), mixed  # whole tiles
    # The stream got a token from every step that fed the prompt (its text may lag a token).
    meanwhile = order[asked_at : order.index("long")].count("short")
    assert meanwhile >= len(mixed) - 1, f"the stream stalled: {meanwhile} of {len(mixed)}"


def test_a_mixed_step_is_whole_row_tiles() -> None:
    assert mixed_step_rows(0, 512) == 512  # a prompt alone: the whole batch
    assert mixed_step_rows(1, 512) == mixed_step_rows(3, 512) == MIXED_STEP_ROWS
    for decoding in (16, 31, 40, 63):  # many slots: a prompt still gets a tile or more
        rows = mixed_step_rows(decoding, 512)
        assert rows % ROW_TILE == 0 and ROW_TILE <= rows - decoding < 2 * ROW_TILE
    assert mixed_step_rows(3, 16) == 16  # never past the batch


async def test_cancelling_one_stream_of_four_leaves_the_others_whole(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    host, engine = await four_slots(hosts, models["a"])
    texts: dict[int, str] = {}

    async def stream(i: int) -> int:
        got, usage = [], 0
        async for chunk in host.chat_stream(ASK, Sampling(max_tokens=30, temperature=0)):
            got.append(chunk.text)
            usage = chunk.usage.completion_tokens if chunk.usage else usage
        texts[i] = "".join(got)
        return usage

    victim = host.chat_stream(ASK, Sampling(max_tokens=30, temperature=0))
    others = [asyncio.create_task(stream(i)) for i in range(3)]
    await anext(victim), await anext(victim), await anext(victim)
    await victim.aclose()
    await until(lambda: len(engine.active) <= 3)
    assert await asyncio.gather(*others) == [30, 30, 30]
    assert texts[0] == texts[1] == texts[2]  # greedy: batching changed no answer
    assert engine.tokens_generated < 3 * 30 + 10 and host.counters.chat_cancelled == 1
    assert not engine.active and not engine.waiting


async def test_keep_alive_unloads_when_idle_and_the_next_request_loads_again(
    models: dict[str, Path], hosts: list[ModelHost]
) -> None:
    host = ModelHost(parallel=4, keep_alive=0.3)
    hosts.append(host)
    base = process_rss()
    await host.load("a", models["a"])
    engine = host._swap.current.engine  # type: ignore[union-attr]
    await host.chat(ASK, Sampling(max_tokens=2))
    await until(lambda: status_of(host)["idle"])
    await asyncio.wait_for(engine.closed.wait(), 10)
    status = status_of(host)
    assert (status["status"], status["model_variant"], status["memory_usage"]) == ("ready", "a", 0)
    assert process_rss() - base < cost_of(models["a"]) / 4, "the memory did not go back"
    out = await host.chat(ASK, Sampling(max_tokens=3))  # waits for the reload
    assert out.model_variant == "a" and out.usage.completion_tokens == 3
    assert host.counters.loads_total == 2 and not status_of(host)["idle"]


async def test_a_finished_download_waits_for_a_keep_alive_wake_then_loads(
    models: dict[str, Path], hosts: list[ModelHost], tmp_path: Path
) -> None:
    # A chat request that wakes a model keep-alive unloaded starts a load the Activator did
    # not start: autoload of a verified download must wait for it, not fail LoadInProgress.
    host = ModelHost(parallel=2, keep_alive=0.3)
    hosts.append(host)
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        activator = Activator(host, store)
        await host.load("a", models["a"])
        await until(lambda: status_of(host)["idle"])
        waking = asyncio.create_task(host.chat(ASK, Sampling(max_tokens=1)))
        await until(lambda: status_of(host)["status"] == "loading")
        spec = ModelSpec("b", "org/repo", "b.gguf", models["b"].stat().st_size, None)
        await activator.activate(spec, models["b"])
        assert (await waking).model_variant == "a"
        assert status_of(host)["model_variant"] == "b"
    finally:
        await store.close()


async def test_a_failed_load_after_unloading_first_brings_the_old_model_back(
    models: dict[str, Path], hosts: list[ModelHost], tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.gguf"  # the header reads fine; the tensors are cut short
    with open(models["b"], "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(models["b"].stat().st_size - (1 << 20)))
    base = process_rss()
    host = ModelHost(parallel=4, memory_max=base + int(1.5 * cost_of(models["a"])))
    hosts.append(host)
    await host.load("a", models["a"])
    swap = asyncio.create_task(host.load("broken", truncated))
    await until(lambda: host._swap.current is None)  # a was unloaded for it
    waiting = asyncio.create_task(host.chat(ASK, Sampling(max_tokens=2)))
    with pytest.raises(ModelLoadError):
        await swap
    assert (await waiting).model_variant == "a"  # the request waited and a answered it
    status = status_of(host)
    assert (status["model_variant"], status["status"]) == ("a", "ready") and status["error"]
