"""The engine on awkward links (issue 18): clean drops, and servers that take fewer connections.

Runs `lawchatd.fetch.FileFetch` as a library against `lawchatd.testing.link_server` (a threaded
file server on loopback that counts the bytes it sent) and prints, per case, the wall time and
the bytes sent beyond the file. Nothing leaves 127.0.0.1.

    .venv/bin/python bench/links.py [--size-mb 48] [--rate-mb 20] [--repeats 3]

- drop: every response closes cleanly after 1,500,000 bytes; the figure is the bytes fetched
  again per drop (the target: at most 64 KiB). `drop+slow disk` makes each write take 0.2 s, so
  that the drop lands while MBs wait in aiohttp's reader (the worst case).
- limit: the server sends `--rate-mb` MB/s per response and answers 403, 429, 503 or a reset to
  a GET while another is being sent; the figure is the wall time against one connection's
  (the target: at most 1.3x). `none` is the normal case: four connections, no refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from lawchatd.fetch import FetchOptions, FileFetch, FileRef, partial
from lawchatd.hub.client import HubClient
from lawchatd.testing.link_server import LinkServer

DROP_AFTER = 1_500_000


async def fetch(server: LinkServer, dest: Path, connections: int) -> float:
    options = FetchOptions(connections=connections, retry_backoff=0.01, max_retries=50)
    began = time.monotonic()
    # As the daemon's session (hub/session.py): 2 MiB reads.
    async with aiohttp.ClientSession(auto_decompress=False, read_bufsize=2 << 20) as session:
        hub = HubClient(session, "http://127.0.0.1:9", None)
        sha = hashlib.sha256(server.data).hexdigest()
        ref = FileRef(len(server.data), sha, url=server.url)
        await FileFetch(ref, dest, hub=hub, options=options).run()
    return time.monotonic() - began


def slow_writes(seconds: float) -> None:
    original = partial.pwrite_all

    def write(fd: int, chunks: list, offset: int) -> int:
        time.sleep(seconds)
        return original(fd, chunks, offset)

    partial.pwrite_all = write


async def drops(data: bytes, folder: Path, slow: bool) -> dict:
    original = partial.pwrite_all
    if slow:
        slow_writes(0.2)
    server = LinkServer(data, drop_after=DROP_AFTER, rate=10_000_000 if slow else None)
    try:
        wall = await fetch(server, folder / "drop.bin", 4)
    finally:
        server.close()
        partial.pwrite_all = original
    extra = server.sent - len(data)
    return {"wall": wall, "drops": server.drops, "per_drop": extra / max(1, server.drops)}


async def limited(data: bytes, folder: Path, rate: int, refuse: str | None) -> dict:
    one_server = LinkServer(data, rate=rate)
    try:
        one = await fetch(one_server, folder / "one.bin", 1)
    finally:
        one_server.close()
    server = LinkServer(
        data, rate=rate, max_concurrent=1 if refuse else None, refuse=refuse or "403"
    )
    try:
        four = await fetch(server, folder / "four.bin", 4)
    finally:
        server.close()
    return {"one": one, "four": four, "ratio": four / one, "refused": server.refused,
            "peak": server.peak}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=48)
    parser.add_argument("--rate-mb", type=float, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the retries after each drop are expected
    data = os.urandom(args.size_mb * 1_000_000)
    rate = int(args.rate_mb * 1_000_000)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for slow in (False, True):
            runs = [await drops(data, folder, slow) for _ in range(args.repeats)]
            name = "drop+slow disk" if slow else "drop"
            per = statistics.median(r["per_drop"] for r in runs)
            print(f"{name:15} drops {runs[0]['drops']:3}  re-fetched per drop (median) "
                  f"{per:9.0f} B  (target <= 65536)", flush=True)  # fmt: skip
        for refuse in (None, "403", "429", "503", "reset"):
            runs = [await limited(data, folder, rate, refuse) for _ in range(args.repeats)]
            ratio = statistics.median(r["ratio"] for r in runs)
            print(f"limit {refuse or 'none':9} one conn {statistics.median(r['one'] for r in runs):5.2f} s"
                  f"  four {statistics.median(r['four'] for r in runs):5.2f} s  ratio {ratio:4.2f}"
                  f"  refused {runs[0]['refused']}  peak {runs[0]['peak']}"
                  f"  load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
