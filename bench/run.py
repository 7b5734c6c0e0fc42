"""lawchatd's download speed and memory, measured side by side with curl and aria2c on loopback.

One run makes a GGUF-looking file of random bytes, serves it with `lawchatd mirror` in its own
process, then downloads it with curl, curl + sha256sum, aria2c -x N and lawchatd (N connections),
in turn, several times, and reports medians and ratios. Nothing leaves 127.0.0.1.

    .venv/bin/python bench/run.py [--size-mb 1024] [--connections 1,4] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from procstat import RssSampler, counters, cpu_seconds, rss_mb, tcp_queues

from lawchatd.testing.daemon import ENDED, Daemon, clean_env, serve_env
from lawchatd.testing.models import describe, make_big_gguf, sha256_of, write_catalog
from lawchatd.testing.ports import free_port, wait_for_port

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ORG, REPO, FILENAME, VARIANT = "bench-org", "bench-repo", "bench.gguf", "bench"
API_KEY = "bench-key-0123456789"
DAEMON_ARGS = ["-m", "lawchatd", "serve"]  # after the interpreter; experiments may swap it
MIB = 1 << 20
BLOCK = 8 * MIB  # read block when warming the page cache
# The brief's flags, plus quiet console output (printing is not downloading).
ARIA2C_FLAGS = [
    "-k",
    "1M",
    "--allow-overwrite=true",
    "--auto-file-renaming=false",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
]

# Targets from the brief; checked and reported, never fatal.
MIN_SINGLE_VS_CURL_SHA = 0.8
MAX_DAEMON_RSS_MB = 200.0
MIN_FANOUT_THROUGHPUT = 0.95  # "within a few %" of the run without extra clients
MAX_FANOUT_RSS_GROWTH_MB = 10.0  # 50 idle sockets cost some kB each; a backlog would cost more


class BenchError(RuntimeError):
    """A measurement that could not be made (a tool failed, a download did not complete)."""


# ---- child processes: every one is registered so Ctrl-C and errors never leave one behind ----

_CHILDREN: list[subprocess.Popen] = []


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        # A session of its own: Ctrl-C reaches only this script, which then stops the children.
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.returncode is None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ValueError):
        _CHILDREN.remove(proc)


def stop_all() -> None:
    for proc in reversed(list(_CHILDREN)):
        stop(proc, timeout=5)


@dataclass(frozen=True)
class Usage:
    """What one process (or tools run one after another) cost."""

    wall: float
    rss: float  # peak, decimal MB
    user: float
    sys: float
    minflt: int  # minor page faults: a sign of memory churned through malloc and free

    def then(self, other: Usage) -> Usage:
        """Run one after the other: everything adds up but the RSS peak."""
        return Usage(
            self.wall + other.wall,
            max(self.rss, other.rss),
            self.user + other.user,
            self.sys + other.sys,
            self.minflt + other.minflt,
        )


def run_tool(cmd: list[str], log: Path) -> Usage:
    """Run to completion and measure that one process."""
    start = time.perf_counter()
    proc = spawn(cmd, log)
    # Not ru_maxrss: after a fork from this script it reports this script's RSS, not the tool's.
    with RssSampler(proc.pid, "VmHWM") as rss:
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU, not earlier children's
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    _CHILDREN.remove(proc)
    if proc.returncode:
        raise BenchError(f"{cmd[0]} exited {proc.returncode}: {tail(log)}")
    return Usage(wall, rss.peak, usage.ru_utime, usage.ru_stime, usage.ru_minflt)


def tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# ---- the file, the catalog, the mirror ----------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    sha256: str
    catalog: Path


def make_source(root: Path, size: int) -> Source:
    """A valid GGUF header, then incompressible bytes; a .sha256 sidecar so the mirror never hashes."""
    folder = root / "hub" / ORG / REPO
    folder.mkdir(parents=True)
    model = describe(VARIANT, make_big_gguf(folder / FILENAME, size))
    path = folder / FILENAME
    Path(f"{path}.sha256").write_text(f"{model.sha256}  {FILENAME}\n")
    catalog = write_catalog(root / "catalog.toml", {VARIANT: model}, repo=f"{ORG}/{REPO}")
    return Source(path, size, model.sha256, catalog)


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(BLOCK):
            pass


def listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    try:
        wait_for_port(proc, port)
    except RuntimeError as exc:
        raise BenchError(f"{exc}: {tail(log)}") from None


@dataclass
class Context:
    tmp: Path
    source: Source
    mirror: subprocess.Popen
    mirror_url: str

    @property
    def resolve_url(self) -> str:
        return f"{self.mirror_url}/{ORG}/{REPO}/resolve/main/{FILENAME}"

    def fresh_dir(self, name: str) -> Path:
        folder = self.tmp / "out" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder


def start_mirror(tmp: Path, source: Source) -> Context:
    port = free_port()
    log = tmp / "mirror.log"
    cmd = [PYTHON, "-m", "lawchatd", "mirror", str(tmp / "hub"), "--port", str(port)]
    proc = spawn(cmd, log, env=clean_env())
    listening(proc, port, log)
    return Context(tmp, source, proc, f"http://127.0.0.1:{port}")


# ---- one measurement ----------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    wall_s: float
    mb_s: float  # decimal megabytes of the file per wall second
    peak_rss_mb: float
    cpu_s: float
    mirror_cpu_s: float  # the server's side of the same transfer: is the mirror the limit?
    extra: dict = field(default_factory=dict)


class MirrorCpu:
    """CPU seconds the mirror spent during a `with` block."""

    def __init__(self, ctx: Context) -> None:
        self.pid = ctx.mirror.pid
        self.used = 0.0

    def __enter__(self) -> MirrorCpu:
        self._start = cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = cpu_seconds(self.pid) - self._start


def make_run(tool: str, size: int, usage: Usage, mirror: float) -> Run:
    run = Run(
        tool,
        round(usage.wall, 3),
        round(size / usage.wall / 1e6, 1),
        round(usage.rss, 1),
        round(usage.user + usage.sys, 2),
        round(mirror, 2),
    )
    run.extra.update(
        cpu_user_s=round(usage.user, 2), cpu_sys_s=round(usage.sys, 2), minor_faults=usage.minflt
    )
    return run


def check_size(path: Path, size: int) -> None:
    got = path.stat().st_size if path.exists() else None
    if got != size:
        raise BenchError(f"{path} has {got} bytes, expected {size}")


def bench_curl(ctx: Context) -> list[Run]:
    """curl alone, then + a sha256 of the file (what lawchatd also does), then + its fsync."""
    out_dir = ctx.fresh_dir("curl")
    out, log, size = out_dir / FILENAME, out_dir / "log", ctx.source.size
    with MirrorCpu(ctx) as mirror:
        curl = run_tool(["curl", "-sSfL", "-o", str(out), ctx.resolve_url], log)
    check_size(out, size)
    # coreutils' sha256sum has no SHA-NI here (~7x slower than OpenSSL, which lawchatd uses).
    sha256sum = run_tool(["sha256sum", str(out)], log)
    openssl = run_tool(["openssl", "dgst", "-sha256", "-r", str(out)], log)
    if tail(log).count(ctx.source.sha256) != 2:
        raise BenchError(f"curl's file hashes wrong: {tail(log)}")
    synced = run_tool(["sync", str(out)], log)  # fsync of this one file
    shutil.rmtree(out_dir)
    return [
        make_run("curl", size, curl, mirror.used),
        make_run("curl+sha256sum", size, curl.then(sha256sum), mirror.used),
        make_run("curl+openssl", size, curl.then(openssl), mirror.used),
        make_run("curl+openssl+sync", size, curl.then(openssl).then(synced), mirror.used),
    ]


def bench_aria2c(ctx: Context, n: int, verify: bool) -> Run:
    out_dir = ctx.fresh_dir(f"aria2c-{n}")
    out, log = out_dir / FILENAME, out_dir / "log"
    cmd = ["aria2c", "-x", str(n), "-s", str(n), *ARIA2C_FLAGS]
    cmd += ["-d", str(out_dir), "-o", FILENAME, ctx.resolve_url]
    with MirrorCpu(ctx) as mirror:
        usage = run_tool(cmd, log)
    check_size(out, ctx.source.size)
    if verify and sha256_of(out) != ctx.source.sha256:  # once is enough to trust the others
        raise BenchError("aria2c's file hashes wrong")
    shutil.rmtree(out_dir)
    return make_run(f"aria2c({n})", ctx.source.size, usage, mirror.used)


# ---- lawchatd -----------------------------------------------------------------------------------


async def start_daemon(ctx: Context, name: str, connections: int, **settings: str) -> Daemon:
    """A daemon on a fresh folder, pointed at the mirror; its data dir is `<folder>/data`."""
    folder = ctx.fresh_dir(name)
    env = serve_env(
        folder / "data",
        API_KEY,
        LAWCHATD_HF_ENDPOINT=ctx.mirror_url,
        LAWCHATD_CATALOG=str(ctx.source.catalog),
        LAWCHATD_CONNECTIONS=str(connections),
        **settings,
    )
    daemon = Daemon(
        folder / "data",
        env,
        folder / "daemon.log",
        api_key=API_KEY,
        command=[PYTHON, *DAEMON_ARGS],
        own_session=True,
    )
    try:
        return await daemon.start()
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(str(exc)[-2000:]) from None


async def wait_finished(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict:
    """The first progress message saying the download ended, from /ws/progress."""
    async with asyncio.timeout(timeout):
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data.get("type") == "progress" and data["status"] in ENDED:
                return data
    raise BenchError("the WebSocket closed before the download ended")


async def bench_lawchatd(ctx: Context, connections: int, clients: int = 0, stuck: int = 0) -> Run:
    tool = f"lawchatd({connections})" + (f"+ws{clients}" if clients else "")
    daemon = await start_daemon(ctx, tool, connections)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            watcher = await session.ws_connect(f"{daemon.url}/ws/progress")
            await watcher.receive_json()  # the snapshot: subscribed from here on
            rss_idle = rss_mb(daemon.pid)
            async with FanOut(daemon, clients - stuck, stuck) as fan:
                run = await timed_download(ctx, daemon, session, watcher, tool)
                run.extra["rss_idle_mb"] = round(rss_idle, 1)
                if clients:
                    run.extra.update(await fan.report())
            await watcher.close()
    finally:
        await daemon.close()
        shutil.rmtree(daemon.data_dir.parent, ignore_errors=True)
    return run


async def timed_download(
    ctx: Context,
    daemon: Daemon,
    session: aiohttp.ClientSession,
    watcher: aiohttp.ClientWebSocketResponse,
    tool: str,
) -> Run:
    """From the POST to the 'completed' message; lawchatd's time includes its sha256 and fsync."""
    pid, size = daemon.pid, ctx.source.size
    rss_start, (user0, sys0, flt0) = rss_mb(pid), counters(pid)
    bench_cpu = resource.getrusage(resource.RUSAGE_SELF)
    with MirrorCpu(ctx) as mirror, RssSampler(pid) as rss:
        start = time.perf_counter()
        body = {"model_variant": VARIANT}
        async with session.post(f"{daemon.url}/models/download", json=body) as resp:
            answer = await resp.json()
            if answer.get("status") != "download_started":
                raise BenchError(f"POST /models/download answered {resp.status} {answer}")
        final = await wait_finished(watcher, timeout=60 + size / 20e6)
        wall = time.perf_counter() - start
    if final["status"] != "completed":
        raise BenchError(f"{tool}: the download ended {final['status']}: {final.get('error')}")
    check_size(daemon.data_dir / "models" / FILENAME, size)
    user1, sys1, flt1 = counters(pid)
    usage = Usage(wall, rss.peak, user1 - user0, sys1 - sys0, flt1 - flt0)
    run = make_run(tool, size, usage, mirror.used)
    run.extra["rss_at_post_mb"] = round(rss_start, 1)
    run.extra["rss_growth_mb"] = round(rss.peak - rss_start, 1)
    run.extra["rss_median_mb"] = round(statistics.median(rss.samples), 1)  # spikes left out
    run.extra["retries"] = final.get("retries", 0)
    used = resource.getrusage(resource.RUSAGE_SELF)
    run.extra["bench_cpu_s"] = round(
        used.ru_utime + used.ru_stime - bench_cpu.ru_utime - bench_cpu.ru_stime, 2
    )
    return run


class FanOut:
    """WebSocket clients on /ws/progress: some read everything, some never read at all."""

    def __init__(self, daemon: Daemon, readers: int, stuck: int) -> None:
        self.daemon = daemon
        self.n_readers, self.n_stuck = readers, stuck
        self.counts: list[int] = []
        self.last: list[str | None] = []
        self.stuck: list[socket.socket] = []
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> FanOut:
        if not self.n_readers and not self.n_stuck:
            return self
        self.counts, self.last = [0] * self.n_readers, [None] * self.n_readers
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(connector=connector)
        url = f"{self.daemon.url}/ws/progress?token={API_KEY}"
        sockets = [await self._session.ws_connect(url) for _ in range(self.n_readers)]
        self._tasks = [asyncio.create_task(self._read(i, ws)) for i, ws in enumerate(sockets)]
        self.stuck = [stuck_client(self.daemon.port) for _ in range(self.n_stuck)]
        await asyncio.sleep(0.2)  # let every snapshot go out before the baseline RSS
        return self

    async def _read(self, index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.counts[index] += 1
                self.last[index] = json.loads(msg.data).get("status")

    async def report(self) -> dict:
        await asyncio.sleep(0.3)  # the readers take the final message
        queues = tcp_queues(self.daemon.port)
        ports = [s.getsockname()[1] for s in self.stuck]
        pending_client = sum(queues.get((p, self.daemon.port), (0, 0))[1] for p in ports)
        pending_daemon = sum(queues.get((self.daemon.port, p), (0, 0))[0] for p in ports)
        return {
            "ws_readers": self.n_readers,
            "ws_stuck": self.n_stuck,
            "ws_messages_per_reader_min": min(self.counts, default=0),
            "ws_messages_per_reader_max": max(self.counts, default=0),
            "ws_readers_saw_completed": sum(s == "completed" for s in self.last),
            # What the stuck clients never read: in their own kernel, and queued in the daemon's.
            "ws_stuck_unread_bytes_client_kernel": pending_client,
            "ws_stuck_unsent_bytes_daemon_kernel": pending_daemon,
        }

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session:
            await self._session.close()
        for sock in self.stuck:
            sock.close()


def stuck_client(port: int) -> socket.socket:
    """A WebSocket that never reads: a tiny receive window, and nothing taken off it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/progress HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    head = sock.recv(12, socket.MSG_PEEK)  # peek: the 101 stays unread like everything after it
    if head != b"HTTP/1.1 101":
        raise BenchError(f"a stuck WebSocket client was not upgraded: {head!r}")
    return sock


# ---- the whole run ------------------------------------------------------------------------------


def measure(ctx: Context, args: argparse.Namespace) -> dict[str, list[Run]]:
    """Every tool once per round, so slow drifts of a shared machine hit them all alike."""
    runs: dict[str, list[Run]] = {}
    fan_n = args.ws_connections or args.connections[-1]
    for rep in range(args.repeats):
        record(runs, rep, *bench_curl(ctx))
        for n in (n for n in args.connections if n > 1):
            record(runs, rep, bench_aria2c(ctx, n, verify=rep == 0))
        for n in args.connections:
            record(runs, rep, asyncio.run(bench_lawchatd(ctx, n)))
        if args.ws_clients:
            fan = bench_lawchatd(ctx, fan_n, args.ws_clients, args.ws_stuck)
            record(runs, rep, asyncio.run(fan))
    return runs


def record(runs: dict[str, list[Run]], rep: int, *done: Run) -> None:
    # Dirty pages of this run must not be written back during the next one's timing.
    os.sync()
    for run in done:
        runs.setdefault(run.tool, []).append(run)
        print(
            f"  round {rep + 1}: {run.tool:<22} {run.wall_s:7.2f} s {run.mb_s:8.1f} MB/s "
            f"{run.peak_rss_mb:7.1f} MB RSS {run.cpu_s:6.2f} s CPU",
            flush=True,
        )


def median_of(runs: list[Run]) -> dict:
    med: dict = {"runs": len(runs)}
    for key in ("wall_s", "mb_s", "peak_rss_mb", "cpu_s", "mirror_cpu_s"):
        med[key] = round(statistics.median(getattr(r, key) for r in runs), 3)
    med["mb_s_min"] = min(r.mb_s for r in runs)
    med["mb_s_max"] = max(r.mb_s for r in runs)
    for key in runs[0].extra:
        values = [r.extra[key] for r in runs if isinstance(r.extra.get(key), int | float)]
        if values:
            med[key] = round(statistics.median(values), 2)
    return med


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios_and_targets(med: dict[str, dict], args: argparse.Namespace) -> tuple[dict, dict]:
    ratios: dict[str, float | None] = {}
    targets: dict[str, dict] = {}
    one = med.get("lawchatd(1)")
    if one:
        for peer in ("curl", "curl+sha256sum", "curl+openssl", "curl+openssl+sync"):
            ratios[f"lawchatd(1)/({peer}) throughput"] = ratio(one["mb_s"], med[peer]["mb_s"])
        ratios["lawchatd(1)/curl peak RSS"] = ratio(one["peak_rss_mb"], med["curl"]["peak_rss_mb"])
        for peer, extra in (("curl+sha256sum", ""), ("curl+openssl", " (stricter, not required)")):
            value = ratios[f"lawchatd(1)/({peer}) throughput"]
            targets[f"lawchatd(1) >= 0.8x {peer}{extra}"] = {
                "value": value,
                "limit": MIN_SINGLE_VS_CURL_SHA,
                "pass": value is not None and value >= MIN_SINGLE_VS_CURL_SHA,
            }
    for n in (n for n in args.connections if n > 1):
        mine, peer = med.get(f"lawchatd({n})"), med.get(f"aria2c({n})")
        if mine and peer:
            ratios[f"lawchatd({n})/aria2c({n}) throughput"] = ratio(mine["mb_s"], peer["mb_s"])
            ratios[f"lawchatd({n})/aria2c({n}) peak RSS"] = ratio(
                mine["peak_rss_mb"], peer["peak_rss_mb"]
            )
    peak = max(m["peak_rss_mb"] for t, m in med.items() if t.startswith("lawchatd"))
    targets["lawchatd peak RSS < 200 MB"] = {
        "value": peak,
        "limit": MAX_DAEMON_RSS_MB,
        "pass": peak < MAX_DAEMON_RSS_MB,
    }
    return ratios, targets


def fanout_check(runs: dict[str, list[Run]], args: argparse.Namespace) -> tuple[dict, dict]:
    """With vs without WebSocket clients, paired run by run: neighbours in time share the noise."""
    base = runs.get(f"lawchatd({args.ws_connections or args.connections[-1]})", [])
    fan = next((rs for tool, rs in runs.items() if "+ws" in tool), [])
    pairs = list(zip(fan, base, strict=False))
    if not pairs:
        return {}, {}
    kept = round(statistics.median(f.mb_s / b.mb_s for f, b in pairs), 3)
    cpu = round(statistics.median(f.cpu_s / b.cpu_s for f, b in pairs if b.cpu_s), 3)
    # The peak is a single malloc spike in noisy runs: the median RSS over the download is what
    # a backlog for stuck clients would raise. RSS at the POST is the clients' sockets alone.
    held = round(
        statistics.median(f.extra["rss_median_mb"] - b.extra["rss_median_mb"] for f, b in pairs), 1
    )
    peak = round(statistics.median(f.peak_rss_mb - b.peak_rss_mb for f, b in pairs), 1)
    sockets = round(
        statistics.median(f.extra["rss_at_post_mb"] - b.extra["rss_at_post_mb"] for f, b in pairs),
        1,
    )
    ratios = {
        "with/without WS clients: throughput (paired median)": kept,
        "with/without WS clients: daemon CPU (paired median)": cpu,
        "with - without WS clients: RSS before the POST, MB": sockets,
        "with - without WS clients: median RSS during the download, MB": held,
        "with - without WS clients: peak RSS, MB": peak,
    }
    targets = {
        "throughput with WS clients >= 0.95x without": {
            "value": kept,
            "limit": MIN_FANOUT_THROUGHPUT,
            "pass": kept >= MIN_FANOUT_THROUGHPUT,
        },
        "daemon median RSS with stuck WS clients - without < 10 MB": {
            "value": held,
            "limit": MAX_FANOUT_RSS_GROWTH_MB,
            "pass": held < MAX_FANOUT_RSS_GROWTH_MB,
        },
    }
    return ratios, targets


def print_report(med: dict[str, dict], ratios: dict, targets: dict) -> None:
    print(
        f"\n{'tool':<22}{'wall s':>8}{'MB/s':>8}{'(min-max)':>12}{'peak RSS MB':>13}"
        f"{'CPU s':>7}{'(user/sys)':>13}{'mirror CPU s':>14}"
    )
    for tool, m in med.items():
        spread = f"({m['mb_s_min']:.0f}-{m['mb_s_max']:.0f})"
        split = f"({m['cpu_user_s']:.2f}/{m['cpu_sys_s']:.2f})"
        print(
            f"{tool:<22}{m['wall_s']:>8.2f}{m['mb_s']:>8.1f}{spread:>12}{m['peak_rss_mb']:>13.1f}"
            f"{m['cpu_s']:>7.2f}{split:>13}{m['mirror_cpu_s']:>14.2f}"
        )
    print()
    for name, value in ratios.items():
        print(f"{name:<64} {value}")
    for tool, m in med.items():
        if "ws_readers" in m:
            print(
                f"\n{tool}: {m['ws_readers']:.0f} readers got {m['ws_messages_per_reader_min']:.0f}"
                f"-{m['ws_messages_per_reader_max']:.0f} messages each, "
                f"{m['ws_readers_saw_completed']:.0f} saw 'completed'; {m['ws_stuck']:.0f} stuck "
                f"clients left {m['ws_stuck_unread_bytes_client_kernel']:.0f} B unread in their "
                f"kernel and {m['ws_stuck_unsent_bytes_daemon_kernel']:.0f} B in the daemon's"
            )
    print()
    for name, t in targets.items():
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {name}: {t['value']} (limit {t['limit']})")


def machine() -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "missing"

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "curl": first_line(["curl", "--version"]),
        "aria2c": first_line(["aria2c", "--version"]),
    }


@contextlib.contextmanager
def workspace(parent: str | None, keep: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="lawchatd-bench-", dir=parent))
    try:
        yield tmp
    finally:
        stop_all()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="test file size in MiB")
    parser.add_argument("--connections", default="1,4", help="lawchatd/aria2c connection counts")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; the median is kept")
    parser.add_argument("--ws-clients", type=int, default=50, help="WebSocket clients (0: skip)")
    parser.add_argument("--ws-stuck", type=int, default=5, help="of those, clients that never read")
    parser.add_argument("--ws-connections", type=int, help="lawchatd connections in the WS run")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "latest.json")
    parser.add_argument("--tmp-dir", help="where the big temporary files go (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.connections = sorted({int(n) for n in args.connections.split(",")})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl", "aria2c", "sha256sum"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (apt-get install -y aria2 curl)")
    # SIGTERM ends the run like Ctrl-C does: through the finally blocks that stop the children.
    signal.signal(signal.SIGTERM, lambda *_: signal.default_int_handler(signal.SIGINT, None))
    started, load_before = time.monotonic(), os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1) / 2:
        print(f"note: load average {load_before[0]:.1f} before the run; expect noisy wall times")
    with workspace(args.tmp_dir, args.keep) as tmp:
        size = args.size_mb * MIB
        print(f"making a {size / 1e6:.0f} MB test file in {tmp} ...", flush=True)
        source = make_source(tmp, size)
        warm_page_cache(source.path)
        ctx = start_mirror(tmp, source)
        run_tool(["curl", "-sSfL", "-o", "/dev/null", ctx.resolve_url], tmp / "warmup.log")
        print(f"mirror on {ctx.mirror_url}; {args.repeats} runs of each tool", flush=True)
        runs = measure(ctx, args)
    med = {tool: median_of(rs) for tool, rs in runs.items()}
    ratios, targets = ratios_and_targets(med, args)
    fan_ratios, fan_targets = fanout_check(runs, args)
    ratios |= fan_ratios
    targets |= fan_targets
    print_report(med, ratios, targets)
    report = {
        "config": {
            k: getattr(args, k) for k in ("connections", "repeats", "ws_clients", "ws_stuck")
        }
        | {"size_bytes": size},
        "machine": machine() | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "seconds_total": round(time.monotonic() - started, 1),
        "medians": med,
        "ratios": ratios,
        "targets": targets,
        "runs": {tool: [asdict(r) for r in rs] for tool, rs in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['seconds_total']} s in all)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
