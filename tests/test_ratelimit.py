"""The shared bandwidth cap: measured on real fetches from the mirror, and its schedule."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from lawchatd.config import Settings
from lawchatd.downloads.bandwidth import Bandwidth
from lawchatd.fetch.ratelimit import QUANTUM, RateLimiter, format_rate, parse_rate
from lawchatd.fetch.schedule import parse_schedule
from lawchatd.hub.session import client_session
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.models import REPO, ModelFile, make_big_gguf

CAP = 16_000_000  # bytes/s: far below what loopback does, so the limiter is the only limit
MONDAY = datetime(2026, 11, 23)  # a Monday


async def consume(
    limiter: RateLimiter, url: str, chunk: int, got: list[int], slot: int, pause: float = 0
) -> None:
    """One connection as the engine runs it: read a chunk, pay for it, read on."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    async with client_session(settings) as session, session.get(url) as resp:
        async for data in resp.content.iter_chunked(chunk):
            await limiter.acquire(len(data))
            got[slot] += len(data)
            if pause:
                await asyncio.sleep(pause)


async def test_cap_holds_and_is_shared_fairly(mirror: Mirror, models: dict[str, ModelFile]):
    url = f"{mirror.url}/{REPO}/resolve/main/{models['big'].filename}"
    limiter = RateLimiter(CAP)
    # Four connections asking in very different chunk sizes, and one slow one (~1 MB/s).
    chunks = [16 << 10, 64 << 10, 256 << 10, 1 << 20]
    got = [0] * 5
    tasks = [asyncio.create_task(consume(limiter, url, c, got, i)) for i, c in enumerate(chunks)]
    tasks.append(asyncio.create_task(consume(limiter, url, 64 << 10, got, 4, pause=0.064)))
    await asyncio.sleep(1.0)  # connections set up, buffers filled
    start, start_got, granted = time.monotonic(), list(got), limiter.granted
    await asyncio.sleep(4.0)
    elapsed = time.monotonic() - start
    moved = [after - before for after, before in zip(got, start_got, strict=True)]
    rate = (limiter.granted - granted) / elapsed
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(not task.done() or task.cancelled() for task in tasks)

    assert abs(rate - CAP) / CAP < 0.05, (rate, moved)
    slow = moved[4] / elapsed
    assert slow > 0.6e6, f"the slow connection was starved: {slow:.0f} B/s"
    fair = (CAP - slow) / 4
    for share in moved[:4]:
        assert abs(share / elapsed - fair) / fair < 0.15, (moved, fair)


async def test_a_100_mb_download_takes_as_long_as_the_cap_says(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The issue's check: 100 MB over 4 ranged connections, from the first byte to the last."""
    root = tmp_path_factory.mktemp("hub100")
    size = 100_000_000
    (root / "org" / "big").mkdir(parents=True)
    make_big_gguf(root / "org" / "big" / "file.gguf", size)
    server = await start_mirror(root)
    limiter, cap = RateLimiter(40_000_000), 40_000_000
    url = f"{server.url}/org/big/resolve/main/file.gguf"

    async def part(index: int, session) -> None:
        first, last = index * size // 4, (index + 1) * size // 4 - 1
        async with session.get(url, headers={"Range": f"bytes={first}-{last}"}) as resp:
            async for data in resp.content.iter_chunked(QUANTUM):
                await limiter.acquire(len(data))

    try:
        async with client_session(Settings(_env_file=None)) as session:  # type: ignore[call-arg]
            async with session.head(url):  # the mirror hashes the file once: not timed
                pass
            started = time.monotonic()
            await asyncio.gather(*(part(i, session) for i in range(4)))
            elapsed = time.monotonic() - started
    finally:
        await server.runner.cleanup()
    assert limiter.granted == size
    assert abs(size / elapsed - cap) / cap < 0.05, f"{size / elapsed / 1e6:.1f} MB/s"


async def test_the_cap_changes_at_once_for_a_waiting_connection() -> None:
    limiter = RateLimiter(1000)
    waiting = asyncio.create_task(limiter.acquire(QUANTUM))  # ~4 minutes at 1 kB/s
    await asyncio.sleep(0.05)
    assert not waiting.done()
    limiter.set_rate(None)
    await asyncio.wait_for(waiting, 1)
    limiter.set_rate(0)
    assert limiter.rate is None


async def test_a_cancelled_waiter_lets_the_next_one_through() -> None:
    limiter = RateLimiter(10_000, quantum=10_000)  # one turn a second
    head = asyncio.create_task(limiter.acquire(10_000))
    await asyncio.sleep(0.02)
    behind = asyncio.create_task(limiter.acquire(10))
    await asyncio.sleep(0.02)
    head.cancel()
    await asyncio.wait_for(behind, 3)  # it inherits the head's place, or it would wait forever
    assert head.cancelled()


async def test_each_turn_buys_a_quantum_for_the_connection_that_waited() -> None:
    limiter = RateLimiter(10_000, quantum=10_000)
    await limiter.acquire(10)  # one turn: 9 990 bytes of credit left for this task
    started = time.monotonic()
    for _ in range(99):
        await limiter.acquire(100)  # paid from the credit: no new turn
    assert time.monotonic() - started < 0.5
    assert limiter.granted == 9_910


def test_rates_in_words() -> None:
    assert parse_rate("20MB") == 20_000_000
    assert parse_rate("100Mbit") == 12_500_000
    assert parse_rate("1.5 MiB/s") == 1_572_864
    assert parse_rate("125000") == 125_000
    assert parse_rate("0") is parse_rate("") is parse_rate(None) is parse_rate(0) is None
    for bad in ("10Mb", "fast", "5 parsecs", "-1", "1e9"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert format_rate(None) == "unlimited"
    assert format_rate(12_500_000) == "12.5 MB/s"


def test_schedule_first_matching_rule_wins() -> None:
    schedule = parse_schedule(
        "mon-fri 08:00-18:00=10MB; fri-mon 22:00-06:00=1MB; sat,sun=50MB; *=0"
    )
    assert schedule is not None

    def rate_at(day: int, hour: int, minute: int = 0) -> int | None:
        rule = schedule.rule_at(MONDAY + timedelta(days=day, hours=hour, minutes=minute))
        assert rule is not None
        return rule.rate

    assert rate_at(0, 8) == 10_000_000  # Monday 08:00: the office is in
    assert rate_at(2, 17, 59) == 10_000_000
    assert rate_at(2, 18) is None  # Wednesday 18:00: `*=0`, unlimited
    assert rate_at(4, 23) == 1_000_000  # Friday night, past midnight into Saturday...
    assert rate_at(5, 3) == 1_000_000
    assert rate_at(5, 12) == 50_000_000  # ...then the weekend rule
    assert rate_at(0, 5, 59) == 1_000_000  # fri-mon wraps round the week
    assert rate_at(1, 5) is None  # Tuesday 05:00 is not in fri-mon
    only_nights = parse_schedule("22:00-06:00=2MB")
    assert only_nights is not None and only_nights.rule_at(MONDAY + timedelta(hours=12)) is None
    assert parse_schedule("  ") is None


@pytest.mark.parametrize(
    "bad", ["weekdays=1MB", "mon 8-18=1MB", "mon=", "=5MB", "mon 08:00-08:00=1MB", "25:00-26:00=1"]
)
def test_schedule_mistakes_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="schedule rule"):
        parse_schedule(bad)


def test_override_lasts_until_the_schedule_moves_on() -> None:
    now = [MONDAY + timedelta(hours=9)]
    changes: list[dict] = []
    bandwidth = Bandwidth(
        RateLimiter(),
        max_rate=5_000_000,
        schedule=parse_schedule("mon-fri 08:00-18:00=10MB"),
        clock=lambda: now[0],
        on_change=changes.append,
    )
    assert (bandwidth.rate, bandwidth.source) == (10_000_000, "schedule")
    bandwidth.set_override(None)  # "unlimited, now"
    assert (bandwidth.rate, bandwidth.source) == (None, "override")
    now[0] = MONDAY + timedelta(hours=17, minutes=59)
    assert bandwidth.update() is None
    now[0] = MONDAY + timedelta(hours=18)  # no rule matches: LAWCHATD_MAX_RATE
    assert (bandwidth.update(), bandwidth.source) == (5_000_000, "setting")
    assert [c["max_rate"] for c in changes] == [10_000_000, None, 5_000_000]
    assert bandwidth.status() == {
        "max_rate": 5_000_000,
        "source": "setting",
        "schedule": "mon-fri 08:00-18:00=10MB",
    }


async def test_schedule_task_switches_at_the_boundary() -> None:
    began = time.monotonic()
    start = MONDAY + timedelta(hours=7, minutes=59, seconds=59.7)

    def clock() -> datetime:
        return start + timedelta(seconds=time.monotonic() - began)

    bandwidth = Bandwidth(RateLimiter(), None, parse_schedule("mon 08:00-09:00=3MB"), clock)
    assert bandwidth.rate is None
    task = asyncio.create_task(bandwidth.run())
    try:
        for _ in range(100):
            if bandwidth.rate is not None:
                break
            await asyncio.sleep(0.02)
        assert bandwidth.rate == 3_000_000
    finally:
        task.cancel()


def test_settings_read_rate_and_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAWCHATD_MAX_RATE", "100Mbit")
    monkeypatch.setenv("LAWCHATD_RATE_SCHEDULE", " mon-fri 08:00-18:00=10MB; *=0 ")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.max_rate == 12_500_000
    assert settings.rate_schedule == "mon-fri 08:00-18:00=10MB; *=0"
