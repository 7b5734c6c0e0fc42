"""The engine on awkward links (issue 18), as a library against a threaded file server on
loopback that counts the bytes it sent (lawchatd.testing.link_server).

A clean drop throws away at most 64 KiB of what arrived, and a file server that allows fewer
connections than the engine opens is fetched in about one connection's time: the engine adapts
its connections per host.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lawchatd.fetch import FetchOptions, FileFetch, FileRef, partial
from lawchatd.hub.client import HubClient
from lawchatd.testing.link_server import LinkServer

DROP_AFTER = 1_500_000  # the server: every connection closes cleanly after 1.5 MB
MAX_LOSS = 64 << 10  # re-fetched per clean drop, at most
OPTIONS = FetchOptions(connections=4, retry_backoff=0.01, max_retries=20)


@contextlib.contextmanager
def link_server(data: bytes, **faults: object) -> Iterator[LinkServer]:
    server = LinkServer(data, **faults)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


async def fetch(server: LinkServer, dest: Path, options: FetchOptions = OPTIONS) -> float:
    """Fetch the server's file into `dest`; the seconds it took."""
    began = time.monotonic()
    # The daemon's session reads 2 MiB at a time (hub/session.py): a drop finds MBs buffered.
    async with aiohttp.ClientSession(auto_decompress=False, read_bufsize=2 << 20) as session:
        client = HubClient(session, "http://127.0.0.1:9", None)
        sha = hashlib.sha256(server.data).hexdigest()
        ref = FileRef(len(server.data), sha, url=server.url)
        fetched = await FileFetch(ref, dest, hub=client, options=options).run()
    assert fetched.sha256 == sha
    return time.monotonic() - began


def slow_disk(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every write takes `seconds` longer: bytes pile up in the client while it waits."""

    pwrite_all = partial.pwrite_all

    def write(fd: int, chunks: list, offset: int) -> int:
        time.sleep(seconds)
        return pwrite_all(fd, chunks, offset)

    monkeypatch.setattr(partial, "pwrite_all", write)


async def test_a_clean_drop_refetches_at_most_64_kib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(16 << 20)
    slow_disk(monkeypatch, 0.2)  # the drop lands while a write waits: the reader holds ~1 MB
    with link_server(data, drop_after=DROP_AFTER, rate=10_000_000) as server:
        await fetch(server, tmp_path / "file.bin")
    assert server.drops >= 8  # two per 4 MiB part at least
    refetched = server.sent - len(data)
    assert refetched <= server.drops * MAX_LOSS, f"{refetched / server.drops:.0f} bytes a drop"


# ---- a server that takes one connection at a time ------------------------------------------

RATE = 16_000_000  # bytes/s per connection: 16 MiB takes ~1.05 s on one connection
ONE_AT_A_TIME_RATIO = 1.6  # the target is 1.3x; a loaded machine gets slack


@pytest.mark.parametrize("refuse", ["403", "429", "reset"])
async def test_a_server_taking_one_connection_costs_about_one_connections_time(
    tmp_path: Path, refuse: str
) -> None:
    data = os.urandom(16 << 20)
    with link_server(data, rate=RATE) as server:
        one = await fetch(server, tmp_path / "one.bin", FetchOptions(connections=1))
    with link_server(data, rate=RATE, max_concurrent=1, refuse=refuse) as server:
        adapted = await fetch(server, tmp_path / "four.bin")
    assert server.refused >= 1 and server.peak == 1
    assert adapted <= ONE_AT_A_TIME_RATIO * one, f"{adapted:.2f} s against {one:.2f} s"


async def test_a_server_taking_every_connection_gets_them_all(tmp_path: Path) -> None:
    data = os.urandom(16 << 20)
    with link_server(data, rate=RATE) as server:
        await fetch(server, tmp_path / "four.bin")
    assert server.peak == 4 and server.refused == 0  # the normal case is left as it was
