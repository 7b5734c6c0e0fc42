"""LAN speed (issue 18): the engine against curl on one big file over loopback, alternated.

A file server in its own process (`lawchatd.testing.link_server`, threads, no pacing) serves a
file of random bytes; each round runs `curl -o` (unverified bytes), `curl | tee FILE | openssl
dgst -sha256` (curl made to verify as it goes), the sha256 of the file alone (in a child, from
the page cache: no verified download can beat it), and then the engine as a library in a child
process (`FileFetch`, 4 connections, sha256 verified, fsync + rename). The engine's child
writes where its wall time went: per connection, the time spent waiting for bytes and for its
writes; the seconds inside pwritev and sha256 (all threads); the time to the last byte, from
there to `verifying` (the hash's tail) and from there to the end (fdatasync, checks, rename);
its CPU seconds.

    .venv/bin/python bench/lan.py [--size-mb 1024] [--rounds 5] [--connections 4] [--line-mbit 0]

Figures on a shared machine are noisy: compare the medians of alternated rounds, and read the
load average printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
SERVER = """
import sys, time
from lawchatd.testing.link_server import LinkServer
line = int(sys.argv[2]) or None
server = LinkServer(open(sys.argv[1], 'rb').read(), line=line)
print(server.url, flush=True)
time.sleep(1e9)
"""


async def engine(
    url: str, dest: Path, size: int, sha: str, connections: int, sync_seconds: float
) -> dict:
    """The child's side: one verified fetch with a timeline of its connections."""
    import aiohttp

    from lawchatd.fetch import FetchOptions, FileFetch, FileRef
    from lawchatd.fetch import fetcher as fetcher_module
    from lawchatd.hub.client import HubClient

    spent: dict[int, dict[str, float]] = {}
    marks: dict[str, float] = {}
    original_read, original_write = fetcher_module.Fetcher._read, fetcher_module.Fetcher._write

    async def timed(kind: str, self: object, call) -> object:
        began = time.monotonic()
        try:
            return await call
        finally:
            row = spent.setdefault(id(self), {"read": 0.0, "write": 0.0})  # write: a whole batch
            row[kind] += time.monotonic() - began
            marks["last_byte"] = time.monotonic()

    async def read(self, content):  # type: ignore[no-untyped-def]
        return await timed("read", self, original_read(self, content))

    async def write(self, part, chunks, *at):  # type: ignore[no-untyped-def]
        return await timed("write", self, original_write(self, part, chunks, *at))

    fetcher_module.Fetcher._read, fetcher_module.Fetcher._write = read, write
    threads = {"disk": 0.0, "hash": 0.0}  # seconds inside pwritev and sha256, all threads
    from lawchatd.fetch import hasher as hasher_module
    from lawchatd.fetch import partial as partial_module

    def in_thread(kind: str, fn):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            began = time.monotonic()
            try:
                return fn(*args)
            finally:
                threads[kind] += time.monotonic() - began

        return call

    partial_module.pwrite_all = in_thread("disk", partial_module.pwrite_all)
    for name in ("_hash_range", "_hash_held"):  # read back, and from memory (not in 71e9ed8)
        if method := getattr(hasher_module.FollowingHasher, name, None):
            setattr(hasher_module.FollowingHasher, name, timed_method(in_thread, method))
    phases: list[tuple[float, str | None]] = []
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    async with aiohttp.ClientSession(auto_decompress=False, read_bufsize=2 << 20) as session:
        hub = HubClient(session, "http://127.0.0.1:9", None)
        fetch = FileFetch(
            FileRef(size, sha, url=url), dest, hub=hub,
            options=FetchOptions(connections=connections, sync_seconds=sync_seconds),
            on_progress=lambda p: phases.append((time.monotonic(), p.phase))
            if not phases or phases[-1][1] != p.phase else None,
        )  # fmt: skip
        await fetch.run()
    end = time.monotonic()
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    verifying = next((t for t, phase in phases if phase == "verifying"), end)
    return {
        "wall": end - began,
        "connections": [{k: round(v, 3) for k, v in row.items()} for row in spent.values()],
        "threads": {k: round(v, 3) for k, v in threads.items()},
        "to_last_byte": round(marks.get("last_byte", end) - began, 3),
        "last_byte_to_verifying": round(verifying - marks.get("last_byte", end), 3),
        "verifying_to_end": round(end - verifying, 3),
        "cpu": round(cpu_end.ru_utime + cpu_end.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
    }


def timed_method(in_thread, method):  # type: ignore[no-untyped-def]
    return lambda self, *args: in_thread("hash", method)(self, *args)


def run_curl(url: str, dest: Path) -> float:
    began = time.monotonic()
    subprocess.run(["curl", "-sSf", "-o", str(dest), url], check=True)
    return time.monotonic() - began


def run_verified_curl(url: str, dest: Path) -> float:
    """curl made to verify: the bytes go to the file and through openssl's sha256 as they come."""
    began = time.monotonic()
    subprocess.run(
        f"set -o pipefail; curl -sSf '{url}' | tee '{dest}' | openssl dgst -sha256 >/dev/null",
        shell=True, check=True, executable="/bin/bash",
    )  # fmt: skip
    return time.monotonic() - began


HASH_ALONE = """
import hashlib, sys, time
began = time.monotonic()
with open(sys.argv[1], 'rb', buffering=0) as f:
    sha, buffer = hashlib.sha256(), bytearray(16 << 20)
    while n := f.readinto(buffer):
        sha.update(memoryview(buffer)[:n])
print(time.monotonic() - began)
"""


def hash_alone(path: Path) -> float:
    """The sha256 of the (page-cached) file in one thread: the floor of any verified download."""
    out = subprocess.run([PYTHON, "-c", HASH_ALONE, str(path)], capture_output=True, text=True)
    return float(out.stdout)


def run_engine(
    url: str, dest: Path, size: int, sha: str, connections: int, sync: float, code: str | None
) -> dict:
    """The engine in a child; `code`: a folder holding another version of lawchatd to run."""
    env = {**os.environ, "PYTHONPATH": code} if code else None
    out = subprocess.run(
        [PYTHON, __file__, "--child", url, str(dest), str(size), sha, str(connections), str(sync)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        url, dest, size, sha, connections, sync = sys.argv[2:8]
        report = asyncio.run(engine(url, Path(dest), int(size), sha, int(connections), float(sync)))
        print(json.dumps(report))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument(
        "--line-mbit", type=float, default=0,
        help="the server paces all its responses together to this many Mbit/s, as a LAN's "
        "line (1000, 10000); 0: as fast as loopback goes",
    )  # fmt: skip
    parser.add_argument("--sync-seconds", type=float, default=2.0, help="FetchOptions'")
    parser.add_argument(
        "--baseline", default=None,
        help="a folder with another lawchatd (git archive REV lawchatd | tar -x -C DIR): "
        "run it too, alternated",
    )  # fmt: skip
    args = parser.parse_args()
    import hashlib

    tmp = Path(tempfile.mkdtemp(prefix="lan-bench-", dir=args.tmp_dir))
    server = None
    try:
        source = tmp / "source.bin"
        sha = hashlib.sha256()
        with open(source, "wb") as out:
            for _ in range(args.size_mb):
                block = os.urandom(1 << 20)
                sha.update(block)
                out.write(block)
        size = args.size_mb << 20
        server = subprocess.Popen(
            [PYTHON, "-c", SERVER, str(source), str(int(args.line_mbit * 1e6 / 8))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        run_curl(url, tmp / "warm.bin")  # warm-up
        curls, verified, hashes, engines, baselines = [], [], [], [], []
        for index in range(args.rounds):
            for dest in tmp.glob("out-*"):
                dest.unlink()
            load = os.getloadavg()[0]
            curls.append(run_curl(url, tmp / f"out-curl-{index}"))
            os.sync()
            verified.append(run_verified_curl(url, tmp / f"out-verified-{index}"))
            os.sync()
            hashes.append(hash_alone(source))
            for code, runs in ((None, engines), (args.baseline, baselines)):
                if code is None and runs is baselines:
                    continue
                dest = tmp / f"out-engine-{index}-{len(runs)}"
                runs.append(run_engine(url, dest, size, sha.hexdigest(), args.connections,
                                       args.sync_seconds, code))  # fmt: skip
                dest.unlink()
                os.sync()
            base = f"  baseline {baselines[-1]['wall']:.2f} s" if baselines else ""
            print(f"round {index + 1}: curl {curls[-1]:.2f} s  curl|tee|openssl "
                  f"{verified[-1]:.2f} s  sha256 alone {hashes[-1]:.2f} s  engine "
                  f"{engines[-1]['wall']:.2f} s{base}  load {load:.2f}  "
                  f"{json.dumps(engines[-1])}", flush=True)  # fmt: skip
        curl, wall = statistics.median(curls), statistics.median(e["wall"] for e in engines)
        checked, alone = statistics.median(verified), statistics.median(hashes)
        print(f"medians: curl {curl:.2f} s, curl|tee|openssl {checked:.2f} s, sha256 alone "
              f"{alone:.2f} s, engine {wall:.2f} s")  # fmt: skip
        print(f"engine / curl {wall / curl:.2f} (target <= 1.0); engine / curl|tee|openssl "
              f"{wall / checked:.2f}; sha256 alone / curl {alone / curl:.2f} (the floor of a "
              f"verified download); load average now {os.getloadavg()[0]:.2f}")  # fmt: skip
        if baselines:
            old = statistics.median(e["wall"] for e in baselines)
            print(f"baseline {old:.2f} s, ratio to curl {old / curl:.2f}")
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
