"""A fair share of the model between keys: slots round robin between callers, per-key limits
(429 + Retry-After in OpenAI's shape through the real openai SDK) and usage per key, against
a real (tiny) llama model behind the real chat routes on loopback.

The caller is set by a test middleware from a header, as the auth middleware sets it from the
key, so these tests do not depend on how keys are stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai import AsyncOpenAI

from lawchatd.config import Settings
from lawchatd.modelhost import Limits, ModelHost
from lawchatd.modelhost.fairqueue import FairQueue
from lawchatd.modelhost.fairshare import FairShare, KeyLimitReached
from lawchatd.testing.ggufgen import make_tiny_llama
from lawchatd.web.caller import Caller, Role, set_caller
from lawchatd.web.errors import json_errors
from lawchatd.web.keys import MODEL_HOST, SETTINGS
from lawchatd.web.routes.metrics import _per_key
from lawchatd.web.routes.openai import add_chat_routes
from lawchatd.web.routes.usage import limits_for

CALLERS = {
    c.name: c
    for c in [
        Caller("admin", Role.ADMIN),
        Caller("anna", Role.USER),
        Caller("ben", Role.USER),
        Caller("carl", Role.USER, max_concurrent=1),
        Caller("tess", Role.USER, tokens_per_minute=30),
        Caller("ursula", Role.USER),
    ]
}
ASK = [{"role": "user", "content": "What is a tort?"}]
NO_EOS = {"2": -100}  # the tiny model's </s> banned: every answer runs to max_tokens


@web.middleware
async def as_caller(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    name = request.headers.get("X-Test-Caller")
    if name:
        set_caller(request, CALLERS[name])
    return await handler(request)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "a.gguf", seed=1)


@pytest.fixture
async def host(model: Path) -> AsyncIterator[ModelHost]:
    h = ModelHost(n_ctx=2048, parallel=2, queue_limit=32)
    await h.load("a", model)
    yield h
    await h.close()


@pytest.fixture
async def server(host: ModelHost, tmp_path: Path) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[json_errors, as_caller])
    app[MODEL_HOST] = host
    app[SETTINGS] = Settings(data_dir=tmp_path, user_max_concurrent=None)
    add_chat_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


Sdk = Callable[[str], AsyncOpenAI]


@pytest.fixture
async def sdk(server: TestClient) -> AsyncIterator[Sdk]:
    """The openai SDK as ``caller``; one HTTP client for all (each new one reads CA files)."""
    async with httpx.AsyncClient(timeout=60) as http:
        yield lambda caller: AsyncOpenAI(
            base_url=str(server.make_url("/v1")),
            api_key="unused",
            default_headers={"X-Test-Caller": caller},
            max_retries=0,  # the SDK would wait Retry-After and retry: we want to see the 429
            http_client=http,
        )


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


# --- the queue alone ---------------------------------------------------------------------


class Item:
    def __init__(self, owner: str, n: int) -> None:
        self.owner, self.n = owner, n


def test_queue_gives_the_slot_to_the_caller_with_fewest_running_then_round_robin() -> None:
    q: FairQueue[Item] = FairQueue()
    for i in range(3):
        q.append(Item("a", i))
    q.append(Item("b", 0))
    order = []
    running: dict[str, int] = {"a": 2}  # a already holds both slots
    while (head := q.head(running)) is not None:
        q.pop(head)
        order.append((head.owner, head.n))
        running = {}  # a slot frees before each pick: only the turn decides
    assert order == [("b", 0), ("a", 0), ("a", 1), ("a", 2)]

    for owner in "aabb":
        q.append(Item(owner, 0))
    picks = []
    while (head := q.head({})) is not None:
        q.pop(head)
        picks.append(head.owner)
    assert picks in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    q.append(Item("a", 9))
    q.appendleft(Item("a", 8))  # a preempted request goes on first in its line
    assert q.head({}).n == 8 and len(q) == 2
    q.remove_if(lambda it: it.n == 8)
    assert [it.n for it in q.clear()] == [9] and not q


def test_tokens_per_minute_retry_after_is_when_enough_tokens_age_out() -> None:
    now = [1000.0]
    fair = FairShare(clock=lambda: now[0])
    limits = Limits(tokens_per_minute=100)
    usage = fair.enter("t", limits)
    fair.spend(usage, prompt=60)
    now[0] += 20
    fair.spend(usage, completion=50)
    fair.leave(usage)
    with pytest.raises(KeyLimitReached) as refused:  # 110 of 100: the first 60 must go
        fair.enter("t", limits)
    assert refused.value.retry_after == 40 and refused.value.status == 429
    now[0] += 40
    fair.leave(fair.enter("t", limits))  # 50 left in the window
    assert fair.figures("t")["tokens_last_minute"] == 50
    assert fair.figures("t")["refused"] == 1 and fair.figures("t")["in_flight"] == 0


# --- through the routes ------------------------------------------------------------------


async def test_another_key_takes_the_next_free_slot(host: ModelHost, sdk: Sdk) -> None:
    """PARALLEL=2: anna sends 10 requests, then ben 1; ben's first token comes before anna's
    third request starts (first come would make him wait for all ten)."""
    first_token: dict[tuple[str, int], float] = {}
    engine = host._swap.current.engine  # type: ignore[union-attr]
    submit, waiting_when_ben_came = engine.submit, []

    def watch(seq: Any) -> None:
        if seq.owner == "ben":
            waiting_when_ben_came.extend(engine.waiting)
        submit(seq)

    engine.submit = watch  # type: ignore[method-assign]

    async def ask(caller: str, n: int) -> None:
        stream = await sdk(caller).chat.completions.create(
            model="a", messages=ASK, max_tokens=16, logit_bias=NO_EOS, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_token.setdefault((caller, n), time.monotonic())

    annas = [asyncio.create_task(ask("anna", i)) for i in range(10)]
    await until(lambda: "anna" in host.usage and host.usage["anna"].requests == 10)
    await asyncio.gather(ask("ben", 0), *annas)

    starts = sorted(first_token, key=first_token.__getitem__)
    assert [c for c, _ in starts].count("anna") == 10
    # Ben goes next after the anna requests already in slots when he came: on a quiet
    # machine two (so before her third); never after one of hers that was still waiting.
    assert len(waiting_when_ben_came) >= 6, "anna's requests should mostly be waiting"
    assert starts.index(("ben", 0)) <= 10 - len(waiting_when_ben_came), starts
    assert host.usage["ben"].completion_tokens == 16
    assert host.usage["anna"].completion_tokens == 160


async def test_max_concurrent_is_a_429_with_retry_after(host: ModelHost, sdk: Sdk) -> None:
    client = sdk("carl")
    held = await client.chat.completions.create(
        model="a", messages=ASK, max_tokens=1500, logit_bias=NO_EOS, stream=True
    )
    await anext(aiter(held))  # carl's one request is answering
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="a", messages=ASK, max_tokens=2)
    response = refused.value.response
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "carl" in error["message"] and "max concurrent 1" in error["message"]
    # Someone else is not held to carl's limit.
    other = await sdk("ursula").chat.completions.create(model="a", messages=ASK, max_tokens=2)
    assert other.usage is not None and other.usage.completion_tokens == 2

    await held.close()  # carl's slot frees: his next request goes through
    await until(lambda: host.usage["carl"].in_flight == 0)
    answer = await client.chat.completions.create(model="a", messages=ASK, max_tokens=2)
    assert answer.choices[0].finish_reason == "length"
    assert host.usage["carl"].refused == 1 and host.usage["carl"].requests == 2


async def test_tokens_per_minute_is_a_429_with_retry_after(sdk: Sdk) -> None:
    client = sdk("tess")
    first = await client.chat.completions.create(
        model="a", messages=ASK, max_tokens=20, logit_bias=NO_EOS
    )
    assert first.usage is not None and first.usage.total_tokens > 30
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="a", messages=ASK, max_tokens=2)
    response = refused.value.response
    assert 50 <= int(response.headers["retry-after"]) <= 60
    assert "30 tokens per minute" in response.json()["error"]["message"]
    # The same refusal on a stream, before any byte of it.
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="a", messages=ASK, max_tokens=2, stream=True)


async def test_usage_per_key(host: ModelHost, server: TestClient, sdk: Sdk) -> None:
    ursula = sdk("ursula")
    answers = [
        await ursula.chat.completions.create(model="a", messages=ASK, max_tokens=n)
        for n in (1, 2, 3)
    ]
    await sdk("ben").chat.completions.create(model="a", messages=ASK, max_tokens=4)

    own = await server.get("/keys/usage", headers={"X-Test-Caller": "ursula"})
    assert own.status == 200
    (mine,) = (await own.json())["keys"]  # a user sees only its own figures
    assert mine["name"] == "ursula" and mine["requests"] == 3 and mine["refused"] == 0
    assert mine["prompt_tokens"] == sum(a.usage.prompt_tokens for a in answers if a.usage)
    assert mine["completion_tokens"] == 6 and mine["in_flight"] == 0
    assert mine["total_tokens"] == mine["prompt_tokens"] + 6 == mine["tokens_last_minute"]
    assert mine["max_concurrent"] is None and mine["tokens_per_minute"] is None

    every = await (await server.get("/keys/usage", headers={"X-Test-Caller": "admin"})).json()
    figures = {k["name"]: k for k in every["keys"]}
    assert set(figures) == {"ursula", "ben"} and figures["ben"]["completion_tokens"] == 4
    assert figures["ursula"] == mine

    metrics = {m.name: m for m in _per_key(host.usage)}
    samples = {tuple(s.labels.values()): s.value for s in metrics["lawchatd_key_tokens"].samples}
    assert samples[("ursula", "completion")] == 6


def test_role_defaults_and_the_keys_own_limits(tmp_path: Path) -> None:
    app = web.Application()
    app[SETTINGS] = Settings(data_dir=tmp_path, user_tokens_per_minute=1000)
    assert limits_for(app, CALLERS["anna"]) == Limits(4, 1000)  # LAWCHATD_USER_* defaults
    assert limits_for(app, CALLERS["carl"]) == Limits(1, 1000)  # the key's own wins
    assert limits_for(app, CALLERS["admin"]) == Limits()  # admins: none unless their key says
    assert Settings(data_dir=tmp_path, user_max_concurrent="none").user_max_concurrent is None
