"""The following hasher and the write path under it (issue 18): the digest is the file's, in
whatever order the connections write; bytes written where the digest stands are hashed from
memory, not read back; whole written pages are started towards the disk at once; a part taken
over while its connection's write is in flight gets no byte in the wrong place."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from lawchatd.fetch import partial as partial_module
from lawchatd.fetch.fetcher import Counters, Fetcher, Link
from lawchatd.fetch.hasher import HOLD, FollowingHasher
from lawchatd.fetch.partial import PAGE, PartialFile
from lawchatd.fetch.plan import Part, PartPlan
from lawchatd.hub.client import HubClient
from lawchatd.testing.link_server import LinkServer

MiB = 1 << 20
BATCH = MiB + 7  # not a whole number of pages


class Tally:
    """Bytes the hasher read back from the file, and bytes it hashed from memory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read_back = self.from_memory = 0
        hash_range, hash_held = FollowingHasher._hash_range, FollowingHasher._hash_held

        def read(hasher: FollowingHasher, fd: int, offset: int, end: int) -> None:
            self.read_back += end - offset
            hash_range(hasher, fd, offset, end)

        def held(hasher: FollowingHasher, fd: int, batches: list) -> None:
            self.from_memory += sum(length for _, length in batches)
            hash_held(hasher, fd, batches)

        monkeypatch.setattr(FollowingHasher, "_hash_range", read)
        monkeypatch.setattr(FollowingHasher, "_hash_held", held)


async def write_in_parts(
    tmp_path: Path,
    data: bytes,
    connections: int,
    order: random.Random | None,
    per_connection: int = 2,
) -> FollowingHasher:
    """Connections fill a plan's parts batch by batch (in a shuffled order of turns when
    `order` is given), offering each written batch to the hasher as the Fetcher does; after
    each round of turns the hasher catches up (as it does when the CPU keeps up)."""
    partial = PartialFile(tmp_path / "f.part")
    await partial.open(truncate=True)
    plan = PartPlan.split(len(data), connections, per_connection)
    hasher = FollowingHasher(partial, plan)
    hashing = asyncio.create_task(hasher.run())
    parts = [plan.claim() for _ in range(connections)]
    try:
        while any(parts):
            turns = [p for p in parts if p is not None]
            if order is not None:
                order.shuffle(turns)
            for part in turns:
                offset = part.offset
                batch = data[offset : min(offset + BATCH, part.end)]
                chunks = [batch[: len(batch) // 3], batch[len(batch) // 3 :]]
                written = await partial.write(chunks, offset)
                hasher.offer(chunks, offset, plan.record(part, written))
                if part.remaining <= 0:
                    plan.release(part)
                    parts[parts.index(part)] = plan.claim()
            while hasher.hashed < plan.frontier():
                await asyncio.sleep(0.001)
        await asyncio.wait_for(hashing, 30)
    finally:
        hashing.cancel()
        await partial.aclose()
    assert (tmp_path / "f.part").read_bytes() == data
    return hasher


async def test_one_connections_bytes_are_hashed_from_memory_with_nothing_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally = Tally(monkeypatch)
    data = os.urandom(24 * MiB)
    hasher = await write_in_parts(tmp_path, data, 1, None)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert (tally.read_back, tally.from_memory) == (0, len(data))


async def test_the_digest_is_the_files_in_any_order_of_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(40 * MiB)
    for seed in range(3):
        tally = Tally(monkeypatch)
        hasher = await write_in_parts(tmp_path, data, 4, random.Random(seed), per_connection=1)
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        # Every byte hashed once: from memory where it was written near the digest, read
        # back where another connection wrote it further ahead (parts of 10 MiB here).
        assert tally.read_back + tally.from_memory == len(data)
        assert tally.read_back > 0 and tally.from_memory > 0


async def test_held_bytes_stay_within_the_bound(tmp_path: Path) -> None:
    # The hasher is not running; batches far and near are offered, some twice.
    partial = PartialFile(tmp_path / "f.part")
    await partial.open(truncate=True)
    hasher = FollowingHasher(partial, PartPlan.split(64 * MiB, 1))
    for offset in [*range(MiB, 64 * MiB, MiB), MiB, 2 * MiB]:
        hasher.offer([b"x" * MiB], offset, MiB)
    hasher.offer([b""], 0, 0)  # an empty write holds nothing
    assert hasher._held_bytes == sum(length for _, length in hasher._held.values()) <= HOLD
    assert 0 not in hasher._held and max(hasher._held) < HOLD  # only what it will soon reach
    await partial.aclose()


def test_sync_file_range_is_there_on_linux(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("sync_file_range is Linux's")
    assert partial_module._SYNC_FILE_RANGE is not None
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, b"x" * MiB, 0)
        assert (
            partial_module._SYNC_FILE_RANGE(fd, 0, MiB, partial_module.SYNC_FILE_RANGE_WRITE) == 0
        )
    finally:
        os.close(fd)


async def test_whole_written_pages_are_started_towards_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(
        partial_module, "_SYNC_FILE_RANGE", lambda fd, o, n, f: started.append((o, n))
    )
    data = os.urandom(12 * MiB)
    await write_in_parts(tmp_path, data, 3, random.Random(1))
    covered = bytearray(len(data))
    for offset, length in started:
        assert offset % PAGE == 0 and length % PAGE == 0  # never a page a write still fills
        assert not any(covered[offset : offset + length])  # each page once
        covered[offset : offset + length] = b"\x01" * length
    # All but the pages the batches (1 MiB + 7 bytes) end in: those wait for the fdatasync.
    assert covered.count(0) <= (len(data) // BATCH + 4) * PAGE


async def test_a_part_taken_over_while_its_write_is_in_flight_gets_no_byte_in_the_wrong_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old connection's write at 4 MiB hangs in its thread; meanwhile it gathers its next
    # batch, and the rest of its part is given to another connection. The next batch must not
    # be written where the part's end now is (the digest, hashed from memory, would not know).
    data = os.urandom(16 * MiB)
    server = LinkServer(data)
    stalled = threading.Event()
    pwrite_all = partial_module.pwrite_all

    def write(fd: int, chunks: list, offset: int) -> int:
        if offset >= 4 * MiB and not stalled.is_set():
            stalled.set()
            time.sleep(0.5)
        return pwrite_all(fd, chunks, offset)

    monkeypatch.setattr(partial_module, "pwrite_all", write)
    partial = PartialFile(tmp_path / "f.part")
    await partial.open(truncate=True)
    plan = PartPlan(len(data), [Part(0, len(data))])
    hasher = FollowingHasher(partial, plan)
    hashing = asyncio.create_task(hasher.run())

    async def backoff(delay: float, exc: BaseException, note: str | None) -> None:
        await asyncio.sleep(0)

    try:
        async with aiohttp.ClientSession(auto_decompress=False, read_bufsize=2 * MiB) as session:
            link = Link(HubClient(session, "http://127.0.0.1:9", None), url=URL(server.url))

            def fetcher() -> Fetcher:
                return Fetcher(
                    link, partial, plan, counters=Counters(), max_retries=2,
                    backoff_base=0.0, backoff=backoff, follower=hasher,
                )  # fmt: skip

            part = plan.claim()
            assert part is not None
            old = asyncio.create_task(fetcher().fill(part))
            await asyncio.to_thread(stalled.wait, 10)
            await asyncio.sleep(0.2)  # the next batch arrives and waits for the stalled write
            rest = plan.take_over(part)
            assert rest is not None and rest.start >= 4 * MiB
            await fetcher().fill(rest)
            await old
        await asyncio.wait_for(hashing, 10)
    finally:
        hashing.cancel()
        await partial.aclose()
        server.close()
    on_disk = (tmp_path / "f.part").read_bytes()
    assert on_disk == data
    assert hasher.hexdigest() == hashlib.sha256(on_disk).hexdigest()


class Stream:
    """A response body served in random pieces, with random pauses and random drops: the
    schedules under which steals and take-overs meet writes in flight."""

    def __init__(self, data: bytes, start: int, end: int, rng: random.Random) -> None:
        self.data, self.at, self.end, self.rng = data, start, end, rng
        self.content = self  # the response and its body in one


class RandomFetcher(Fetcher):
    async def _read(self, content: Stream) -> bytes:  # type: ignore[override]
        await asyncio.sleep(content.rng.choice([0, 0, 0, 0.0005, 0.002]))
        if content.rng.random() < 0.01:
            raise ConnectionResetError("dropped")
        size = min(content.rng.choice([1, 100, 4096, 8 << 10, 40 << 10]), content.end - content.at)
        piece = content.data[content.at : content.at + size]
        content.at += size
        return piece


async def random_schedule(path: Path, seed: int) -> None:
    """Up to four workers fill a random plan from randomly cut streams; half of the time a
    worker without a part takes the rest of a running one over."""
    rng = random.Random(seed)
    data = os.urandom(rng.randrange(1, 1 << 20))
    partial = PartialFile(path)
    await partial.open(truncate=True)
    plan = PartPlan.split(len(data), rng.randrange(1, 6), rng.choice([1, 2, 8]))
    hasher = FollowingHasher(partial, plan)
    hashing = asyncio.create_task(hasher.run())
    fetcher = RandomFetcher(
        None, partial, plan, counters=Counters(), max_retries=0,  # type: ignore[arg-type]
        backoff_base=0.0, backoff=None, follower=hasher,  # type: ignore[arg-type]
    )  # fmt: skip

    async def worker() -> None:
        while True:
            part = plan.claim()
            if part is None and plan.busy and rng.random() < 0.5:
                running = [p for p in plan.parts if p.start in plan.busy and p.done > 0]
                part = plan.take_over(rng.choice(running)) if running else None
            if part is None:
                if not plan.busy:
                    return
                await asyncio.sleep(0.001)
                continue
            try:
                while part.remaining > 0:
                    with contextlib.suppress(ConnectionResetError):
                        body = Stream(data, part.offset, part.end, rng)
                        await fetcher._stream(body, part, 0)  # type: ignore[arg-type]
            finally:
                plan.release(part)

    try:
        await asyncio.gather(*[worker() for _ in range(4)])
        await asyncio.wait_for(hashing, 20)
    finally:
        hashing.cancel()
        await partial.aclose()
    assert await asyncio.to_thread(path.read_bytes) == data, seed
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest(), seed
    assert hasher._held_bytes == sum(n for _, n in hasher._held.values()), seed
    await asyncio.to_thread(path.unlink)


async def test_random_schedules_of_steals_take_overs_and_drops_keep_the_file_and_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Everything small, so that a few hundred KB make many parts, batches and held batches.
    from lawchatd.fetch import fetcher as fetcher_module
    from lawchatd.fetch import hasher as hasher_module
    from lawchatd.fetch import plan as plan_module

    monkeypatch.setattr(plan_module, "MIN_PART", 64 << 10)
    monkeypatch.setattr(hasher_module, "HOLD", 256 << 10)
    monkeypatch.setattr(hasher_module, "HASH_SIZE", 128 << 10)
    monkeypatch.setattr(fetcher_module, "WRITE_SIZE", 32 << 10)
    for seed in range(150):
        await random_schedule(tmp_path / f"{seed}.part", seed)
