"""Issues 9 and 23 measured from the outside: how fast a broken start ends, what a slowloris
attack, slow request bodies, a WebSocket flood and gzip bombs cost the daemon, and what the
guard, auth and session checks cost a request.

    .venv/bin/python bench/security.py [--code DIR] [--attackers 500] [--requests 2000]
    .venv/bin/python bench/security.py --only floods     # issue 23's three attacks alone

`--code DIR` runs another checkout's lawchatd (say /work/main, for the numbers before the fix).
Each part starts its own `python -m lawchatd serve` on 127.0.0.1 with a temporary data folder.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
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


async def probes(url: str, count: int, method: str = "GET", path: str = "/healthz") -> list:
    """(status, ms) of `count` requests from a client that is not the attacker (127.0.0.200)."""
    results = []
    for _ in range(count):
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.200", 0), force_close=True)
        began = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.request(method, url + path, headers={"Authorization": f"Bearer {KEY}"},
                                timeout=aiohttp.ClientTimeout(total=10)) as resp,
            ):  # fmt: skip
                await resp.read()
                results.append((resp.status, (time.monotonic() - began) * 1000))
        except (aiohttp.ClientError, TimeoutError):
            results.append((0, (time.monotonic() - began) * 1000))
        await asyncio.sleep(0.05)
    return results


def summary(results: list) -> str:
    ok = [ms for status, ms in results if status == 200]
    worst = f", max {max(ok):.1f} ms" if ok else ""
    return f"{len(ok)}/{len(results)} answered 200{worst}"


async def slow_bodies(code: Path, root: Path, attackers: int) -> None:
    print(f"\n## slow bodies: {attackers} `POST /session`, Content-Length 1000, 1 byte sent")
    daemon = await start_daemon(env_for(code, root / "bodies"))
    host, port = daemon.url.removeprefix("http://").split(":")
    head = (
        b"POST /session HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    writers = []
    try:
        for _ in range(attackers):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(head)
            writers.append(writer)
        await asyncio.sleep(0.5)
        results = await probes(daemon.url, 60)
        print(f"- /healthz during the attack: {summary(results)}")
    finally:
        for writer in writers:
            writer.close()
        await daemon.close()


async def websocket_flood(code: Path, root: Path, attackers: int) -> None:
    print(f"\n## WebSocket flood: {attackers} `/ws/progress` from 127.0.0.1, held open")
    daemon = await start_daemon(env_for(code, root / "ws"))
    host, port = daemon.url.removeprefix("http://").split(":")
    writers, opened = [], 0
    try:
        for _ in range(attackers):
            reader, writer = await asyncio.open_connection(host, int(port))
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /ws/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
            )
            writers.append(writer)
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
                opened += b" 101 " in line
            except (TimeoutError, ConnectionError):
                pass
        print(f"- WebSockets open: {opened} of {attackers}")
        print(f"- /healthz meanwhile: {summary(await probes(daemon.url, 20))}")
        body = await probes(daemon.url, 5, "GET", "/models/available")
        print(f"- GET /models/available meanwhile: {summary(body)}")
    finally:
        for writer in writers:
            writer.close()
        await daemon.close()


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(size >> 20)) + packer.flush()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def gzip_bombs(code: Path, root: Path, count: int = 4) -> None:
    bomb = gzip_of_zeros(1 << 30)
    print(f"\n## gzip bombs: {count} bodies of {len(bomb) / 1e6:.1f} MB, 1 GiB of zeros each")
    daemon = await start_daemon(env_for(code, root / "bomb"))
    host, port = daemon.url.removeprefix("http://").split(":")
    head = (
        "POST /models/download HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(bomb)}\r\n\r\n"
    ).encode()

    async def send() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        answer = b""
        try:  # the head and a first KiB; the answer; then the rest, as a client that does
            # not wait for one would send it
            writer.write(head + bomb[:1024])
            answer = await asyncio.wait_for(reader.read(200), 60)
            writer.write(bomb[1024:])
            await writer.drain()
            await asyncio.wait_for(reader.read(), 60)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
        return answer

    try:
        before = cpu_seconds(daemon.pid)
        sending = [asyncio.create_task(send()) for _ in range(count)]
        results = await probes(daemon.url, 40)
        answers = await asyncio.gather(*sending)
        await asyncio.sleep(1)
        spent = cpu_seconds(daemon.pid) - before
        statuses = [a.split(b" ", 2)[1].decode() if a else "reset" for a in answers]
        print(f"- answers: {', '.join(statuses)}; daemon CPU: {spent:.2f} s")
        print(f"- /healthz meanwhile: {summary(results)}")
    finally:
        await daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--attackers", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--only", choices=("floods",), help="issue 23's attacks alone")
    args = parser.parse_args()
    print(f"# lawchatd security bench, code from {args.code}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only is None:
            start_failures(args.code, root)
            asyncio.run(slowloris(args.code, root, args.attackers))
        asyncio.run(slow_bodies(args.code, root, 300))
        asyncio.run(websocket_flood(args.code, root, 300))
        asyncio.run(gzip_bombs(args.code, root))
        if args.only is None:
            asyncio.run(overhead(args.code, root, args.requests))


if __name__ == "__main__":
    main()
