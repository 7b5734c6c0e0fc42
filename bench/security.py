"""Issue 9 measured from the outside: how fast a broken start ends, what a slowloris attack
costs the daemon, and what the guard, auth and session checks cost a request.

    .venv/bin/python bench/security.py [--code DIR] [--attackers 500] [--requests 2000]

`--code DIR` runs another checkout's lawchatd (say /work/main, for the numbers before the fix).
Each part starts its own `python -m lawchatd serve` on 127.0.0.1 with a temporary data folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from lawchatd.testing.daemon import Daemon, serve_env

KEY = "bench-key-0123456789"


def env_for(code: Path, data: Path, **extra: str) -> dict[str, str]:
    return serve_env(
        data,
        KEY,
        PYTHONPATH=str(code),
        LAWCHATD_HF_ENDPOINT="http://127.0.0.1:9",
        LAWCHATD_LOG_LEVEL="WARNING",
        **extra,
    )


def timed_start(env: dict[str, str], limit: float = 10) -> str:
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lawchatd", "serve"],
            env=env,
            cwd=env["PYTHONPATH"],  # `python -m` puts the working folder first on the path
            capture_output=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return f"still running after {limit:.0f} s (killed)"
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return (
        f"exit {done.returncode} in {time.monotonic() - began:.2f} s, {len(lines)} stderr line(s)"
    )


def start_failures(code: Path, root: Path) -> None:
    print("## start-up failures (time from exec to exit)")
    cases: dict[str, tuple[Path, dict[str, str]]] = {}
    garbage = root / "garbage"
    garbage.mkdir()
    (garbage / "lawchatd.sqlite3").write_bytes(os.urandom(8192))
    cases["database is not SQLite"] = (garbage, {})
    newer = root / "newer"
    newer.mkdir()
    with sqlite3.connect(newer / "lawchatd.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    cases["newer schema"] = (newer, {})
    (root / "file").write_text("x")
    cases["data folder cannot be created"] = (root / "file" / "data", {})
    cases["invalid setting"] = (root / "ok", {"LAWCHATD_PORT": "eighty"})
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases["port in use"] = (root / "ok2", {"LAWCHATD_PORT": str(taken.getsockname()[1])})
    for name, (data, extra) in cases.items():
        print(f"- {name}: {timed_start(env_for(code, data, **extra))}")
    taken.close()


async def start_daemon(env: dict[str, str]) -> Daemon:
    """The daemon of the checkout in env's PYTHONPATH (`python -m` imports the cwd first)."""
    data = Path(env["LAWCHATD_DATA_DIR"])
    env = {**env, "LAWCHATD_LOG_LEVEL": "INFO"}  # INFO: the "listening on" line
    log = data.parent / f"{data.name}.log"
    return await Daemon(data, env, log, api_key=KEY, cwd=Path(env["PYTHONPATH"])).start()


def fds(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/fd"))


async def healthz_ms(url: str) -> float:
    began = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return (time.monotonic() - began) * 1000


async def slowloris(code: Path, root: Path, attackers: int) -> None:
    print(f"\n## slowloris: {attackers} half-sent requests, default settings")
    daemon = await start_daemon(env_for(code, root / "slow"))
    url = daemon.url
    host, port = url.removeprefix("http://").split(":")
    try:
        before = fds(daemon)
        began = time.monotonic()
        socks = []
        for _ in range(attackers):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            socks.append((reader, writer))
        await asyncio.sleep(0.5)
        during = fds(daemon)
        latencies = [await healthz_ms(url) for _ in range(20)]
        print(f"- daemon fds: {before} before, {during} during the attack")
        print(
            f"- /healthz during the attack: 20/20 answered, median "
            f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms"
        )
        closed = 0
        for reader, _ in socks:
            try:
                while await asyncio.wait_for(reader.read(4096), 65 - (time.monotonic() - began)):
                    pass
                closed += 1
            except ConnectionError:  # a reset: closed with unread bytes
                closed += 1
            except TimeoutError:
                pass
        print(
            f"- closed by the daemon: {closed}/{attackers} within "
            f"{time.monotonic() - began:.1f} s of the attack's start; fds after: {fds(daemon)}"
        )
        for _, writer in socks:
            writer.close()
    finally:
        await daemon.close()


async def overhead(code: Path, root: Path, requests: int) -> None:
    print(f"\n## cost per request: {requests} GET /models/download-progress on one connection")
    daemon = await start_daemon(env_for(code, root / "cost"))
    url = daemon.url
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/session", json={"api_key": KEY}) as resp:
                cookie = resp.cookies.get("lawchatd_session")
            ways = {"Bearer header": {"Authorization": f"Bearer {KEY}"}}
            if cookie is not None:
                ways["session cookie"] = {"Cookie": f"lawchatd_session={cookie.value}"}
            best: dict[str, float] = {}
            for _ in range(3):  # alternated, best of three: the machine is shared
                for name, headers in ways.items():
                    began = time.monotonic()
                    for _ in range(requests):
                        async with session.get(
                            url + "/models/download-progress", headers=headers
                        ) as r:
                            assert r.status == 200, r.status
                            await r.read()
                    best[name] = min(best.get(name, 1e9), time.monotonic() - began)
            for name, took in best.items():
                print(
                    f"- {name}: {requests / took:.0f} requests/s ({took / requests * 1e6:.0f} µs each)"
                )
    finally:
        await daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--attackers", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    print(f"# lawchatd security bench, code from {args.code}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start_failures(args.code, root)
        asyncio.run(slowloris(args.code, root, args.attackers))
        asyncio.run(overhead(args.code, root, args.requests))


if __name__ == "__main__":
    main()
