"""The following hasher and the write path under it (issue 18): the digest is the file's, in
whatever order the connections write; bytes written where the digest stands are hashed from
memory, not read back; every written byte is started towards the disk at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
from pathlib import Path

import pytest

from lawchatd.fetch import partial as partial_module
from lawchatd.fetch.hasher import HOLD, FollowingHasher
from lawchatd.fetch.partial import PartialFile
from lawchatd.fetch.plan import PartPlan

BATCH = 1 << 20


def read_back_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes the hasher read back from the file, counted."""
    read: list[int] = []
    hash_range = FollowingHasher._hash_range

    def counted(self: FollowingHasher, fd: int, offset: int, end: int) -> None:
        read.append(end - offset)
        hash_range(self, fd, offset, end)

    monkeypatch.setattr(FollowingHasher, "_hash_range", counted)
    return read


async def write_in_parts(
    tmp_path: Path, data: bytes, connections: int, order: random.Random | None
) -> tuple[str, int]:
    """Connections fill a plan's parts batch by batch (in a shuffled order of turns when
    `order` is given), offering each written batch to the hasher as the Fetcher does."""
    partial = PartialFile(tmp_path / "f.part")
    await partial.open(truncate=True)
    plan = PartPlan.split(len(data), connections, 2)
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
                written = await partial.write(
                    [batch[: len(batch) // 3], batch[len(batch) // 3 :]], offset
                )
                hasher.offer([batch], offset, plan.record(part, written))
                await asyncio.sleep(0)
                if part.remaining <= 0:
                    plan.release(part)
                    parts[parts.index(part)] = plan.claim()
        await asyncio.wait_for(hashing, 30)
    finally:
        hashing.cancel()
        await partial.aclose()
    assert (tmp_path / "f.part").read_bytes() == data
    return hasher.hexdigest(), hasher.hashed


async def test_one_connections_bytes_are_hashed_from_memory_with_nothing_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = read_back_counter(monkeypatch)
    data = os.urandom(24 << 20)
    digest, hashed = await write_in_parts(tmp_path, data, 1, None)
    assert digest == hashlib.sha256(data).hexdigest() and hashed == len(data)
    assert sum(read) == 0


async def test_the_digest_is_the_files_in_any_order_of_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = read_back_counter(monkeypatch)
    data = os.urandom(40 << 20)
    for seed in range(3):
        digest, _ = await write_in_parts(tmp_path, data, 4, random.Random(seed))
        assert digest == hashlib.sha256(data).hexdigest()
    # Bytes written ahead of the digest by the other connections are read back; the batches
    # written where it stands are not.
    assert 0 < sum(read) < 3 * len(data)


async def test_held_bytes_stay_within_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The hasher waits (nothing at offset 0 yet) while batches far and near are offered.
    partial = PartialFile(tmp_path / "f.part")
    await partial.open(truncate=True)
    plan = PartPlan.split(64 << 20, 1)
    hasher = FollowingHasher(partial, plan)
    for offset in range(BATCH, 64 << 20, BATCH):
        hasher.offer([b"x" * BATCH], offset, BATCH)
    assert hasher._held_bytes <= HOLD
    assert max(hasher._held) < HOLD  # only what the digest will soon reach
    await partial.aclose()


def test_sync_file_range_is_there_on_linux(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("sync_file_range is Linux's")
    assert partial_module._SYNC_FILE_RANGE is not None
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, b"x" * BATCH, 0)
        assert (
            partial_module._SYNC_FILE_RANGE(fd, 0, BATCH, partial_module.SYNC_FILE_RANGE_WRITE) == 0
        )
    finally:
        os.close(fd)


async def test_every_written_byte_is_started_towards_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(partial_module, "start_writeback", lambda fd, o, n: started.append((o, n)))
    data = os.urandom(12 << 20)
    await write_in_parts(tmp_path, data, 3, random.Random(1))
    covered = bytearray(len(data))
    for offset, length in started:
        covered[offset : offset + length] = b"\x01" * length
    assert covered == b"\x01" * len(data)
