"""`/metrics` through prometheus_client: the histograms after a download and two chats, read
back with prometheus_client's parser and, where it is installed, checked by `promtool`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lawchatd.modelhost.chat_types import Chunk, Usage
from lawchatd.state.histograms import ChatTimings
from lawchatd.testing.daemon import Daemon
from lawchatd.testing.mirror_server import Mirror

CHAT = {"messages": [{"role": "user", "content": "What is a tort?"}], "max_tokens": 8}
CHAT_HISTOGRAMS = (
    "lawchatd_chat_request_duration_seconds",
    "lawchatd_chat_time_to_first_token_seconds",
    "lawchatd_chat_completion_tokens_per_second",
)


async def scrape(daemon: Daemon) -> str:
    session = await daemon.session()
    async with session.get(daemon.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return await resp.text()


def histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(upper bound, cumulative count) per bucket, the count and the sum of one histogram."""
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    assert family.type == "histogram"
    samples: list[Sample] = family.samples
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name == f"{name}_bucket"]
    count = next(s.value for s in samples if s.name == f"{name}_count")
    total = next(s.value for s in samples if s.name == f"{name}_sum")
    assert buckets[-1] == (float("inf"), count)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
    return buckets, count, total


async def test_histograms_after_a_download_and_two_chats(make_daemon, mirror: Mirror):
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="true").start()
    status, reply = await daemon.post("/models/download", {"model_variant": "tiny-small"})
    assert status == 200, reply
    assert (await daemon.wait_done())["status"] == "completed"

    status, answer = await daemon.post("/v1/chat/completions", CHAT)  # waits for the load
    assert status == 200, answer
    session = await daemon.session()
    async with session.post(
        daemon.url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        assert resp.status == 200
        events = [line async for line in resp.content if line.strip()]
    assert events[-1].strip() == b"data: [DONE]"

    text = await scrape(daemon)
    _, downloads, seconds = histogram(text, "lawchatd_download_duration_seconds")
    assert downloads == 1 and seconds > 0
    _, answered, seconds = histogram(text, "lawchatd_chat_request_duration_seconds")
    assert answered == 2 and seconds > 0
    _, first_tokens, to_first = histogram(text, "lawchatd_chat_time_to_first_token_seconds")
    assert first_tokens == 2 and 0 < to_first <= seconds
    _, timed, rate = histogram(text, "lawchatd_chat_completion_tokens_per_second")
    assert timed <= 2 and (timed == 0 or rate > 0)  # an answer of one piece has no speed
    # The counters are still there beside them.
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "lawchatd_download_bytes",
        "lawchatd_chat_requests",
        "lawchatd_model_loaded",
    } <= families

    if promtool := shutil.which("promtool"):
        check = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=text.encode(),
            capture_output=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert not check.stdout.strip() and not check.stderr.strip()  # no lint warning


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is not installed")
async def test_promtool_finds_nothing_in_a_fresh_daemon(daemon: Daemon):
    text = await scrape(daemon)
    check = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check


# --- ChatTimings alone ------------------------------------------------------------------


async def pieces(*chunks: Chunk | Exception, gap: float = 0.01) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        await asyncio.sleep(gap)
        if isinstance(chunk, Exception):
            raise chunk
        yield chunk


def observed(timings: ChatTimings) -> dict[str, float]:
    return {
        family.name: next(s.value for s in family.samples if s.name.endswith("_count"))
        for family in timings.collect()
    }


async def test_a_finished_answer_is_timed_once() -> None:
    timings = ChatTimings()
    done = Chunk("m", "c", "stop", Usage(prompt_tokens=3, completion_tokens=3))
    async for _ in timings.observe(pieces(Chunk("m", "a"), Chunk("m", "b"), done)):
        pass
    assert observed(timings) == dict.fromkeys(CHAT_HISTOGRAMS, 1)
    rate = next(f for f in timings.collect() if f.name == CHAT_HISTOGRAMS[2])
    speed = next(s.value for s in rate.samples if s.name.endswith("_sum"))
    assert 0 < speed < 2 / 0.02 * 1.01  # two tokens after the first, at least 20 ms apart


async def test_a_refused_or_cancelled_answer_has_no_duration() -> None:
    timings = ChatTimings()
    with pytest.raises(RuntimeError):
        async for _ in timings.observe(pieces(RuntimeError("queue full"))):
            pass
    assert set(observed(timings).values()) == {0}

    closed = asyncio.Event()

    async def endless() -> AsyncIterator[Chunk]:
        try:
            while True:
                yield Chunk("m", "x")
                await asyncio.sleep(0)
        finally:
            closed.set()

    stream = timings.observe(endless())
    await anext(stream)
    await stream.aclose()  # the client went away
    assert closed.is_set()  # the host was told to stop generating
    assert observed(timings) == {**dict.fromkeys(CHAT_HISTOGRAMS, 0), CHAT_HISTOGRAMS[1]: 1}


def test_two_apps_in_one_process_keep_their_own_histograms() -> None:
    first, second = ChatTimings(), ChatTimings()  # the global registry would refuse the second
    first.request_seconds.observe(1.0)
    assert observed(first)[CHAT_HISTOGRAMS[0]] == 1 and observed(second)[CHAT_HISTOGRAMS[0]] == 0
