"""Issue 23: what an attack campaign still got through, each driven with raw sockets against the
real daemon on loopback. The attacker and the probing client use different source addresses
(127.0.0.x), as two machines would. Counts are modest (the suite runs on 2 cores); the
full-size figures come from bench/security.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import sqlite3
import ssl
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
from aiohttp import web

from lawchatd.errors import in_words
from lawchatd.fetch import DownloadFailed, FetchOptions, FileFetch, FileRef, MemoryJournal
from lawchatd.hub.client import HubClient
from lawchatd.process.startup import EX_DATAERR
from lawchatd.testing.daemon import Daemon
from lawchatd.testing.mirror_server import Mirror
from lawchatd.testing.models import sha256_of
from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import serve, served
from tests.harness import final_file, part_file, start_download
from tests.test_fetch_library import (
    DATA,
    OPTIONS,
    SHA,
    SIZE,
    hub_of,
    server,  # noqa: F401 - the fixture
)
from tests.test_fetch_library import Server as BlobServer

LIMIT = 64  # LAWCHATD_MAX_CONNECTIONS: the WebSocket cap is a quarter of it (16, 4 per address)
PROBE = "127.0.0.200"  # the client that is not the attacker


@pytest.fixture
async def capped(make_daemon: Callable[..., Daemon]) -> Daemon:
    # Keyless on loopback: the attacker needs no key, as in the campaign.
    return await make_daemon(
        LAWCHATD_API_KEY="",
        LAWCHATD_BODY_TIMEOUT="30",
        LAWCHATD_MAX_CONNECTIONS=str(LIMIT),
    ).start()


async def connect(daemon: Daemon, source: str = "127.0.0.1"):
    parts = urlsplit(daemon.url)
    return await asyncio.open_connection(parts.hostname, parts.port, local_addr=(source, 0))


async def probe(daemon: Daemon, method: str = "GET", path: str = "/healthz", **kw) -> int:
    connector = aiohttp.TCPConnector(local_addr=(PROBE, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.request(method, daemon.url + path, **kw) as resp,
    ):
        return resp.status


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        with contextlib.suppress(Exception):
            writer.close()


# ---- 1: slow request bodies -----------------------------------------------------------------


async def test_slow_bodies_at_the_cap_do_not_lock_out_healthz(capped: Daemon) -> None:
    """Past the cap a trickling body is evicted (oldest first): it used to count as busy and
    hold its slot for the whole body timeout, and /healthz answered 503."""
    head = (
        b"POST /session HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"key": "'
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(LIMIT + 36):
            _, writer = await connect(capped)
            writer.write(head)
            writers.append(writer)
        await asyncio.sleep(0.5)
        for writer in writers:  # still trickling
            with contextlib.suppress(ConnectionError):
                writer.write(b"a")
        await asyncio.sleep(0.2)
        statuses = [await probe(capped) for _ in range(10)]
        assert statuses == [200] * 10, statuses
        assert await probe(capped, "GET", "/models/available") == 200
    finally:
        close_all(writers)


# ---- 2: WebSocket floods --------------------------------------------------------------------


def upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /ws/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def open_websocket(daemon: Daemon, source: str):
    """(status of the upgrade, writer): 101 and an open socket, or the refusal."""
    reader, writer = await connect(daemon, source)
    writer.write(upgrade_request())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
    except (ConnectionError, TimeoutError):
        return 0, writer
    return int(status_line.split()[1]) if status_line else 0, writer


async def test_a_websocket_flood_leaves_rest_answering(capped: Daemon) -> None:
    writers: list[asyncio.StreamWriter] = []
    statuses: list[int] = []
    try:
        for attacker in range(10):  # ten machines, eight sockets each
            for _ in range(8):
                status, writer = await open_websocket(capped, f"127.0.0.{attacker + 1}")
                statuses.append(status)
                writers.append(writer)
        opened = statuses.count(101)
        assert opened == LIMIT // 4, statuses  # 16 in total, at most 4 per address
        assert set(statuses) == {101, 503}, statuses
        for _ in range(5):
            assert await probe(capped) == 200
        assert await probe(capped, "GET", "/models/available") == 200
        body = {"model_variant": "no-such-variant"}
        assert await probe(capped, "POST", "/models/download", json=body) == 400
        # One address cannot take the others' sockets: a fresh one still gets in when room
        # is made.
        close_all(writers[:8])
        await asyncio.sleep(0.3)
        status, writer = await open_websocket(capped, PROBE)
        writers.append(writer)
        assert status == 101
    finally:
        close_all(writers)


# ---- 3: gzip bombs --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: a gzip wrapper; 1: quick to build
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(size >> 20)) + packer.flush()


async def test_a_gzip_bomb_costs_no_cpu(capped: Daemon) -> None:
    bomb = gzip_of_zeros(256 << 20)  # 1.1 MB on the wire, 256 MiB (0.5 s of CPU) inflated
    head = (
        "POST /models/download HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
    ).encode()
    await probe(capped)  # warm
    before = cpu_seconds(capped.pid)
    for _ in range(2):
        reader, writer = await connect(capped)
        try:
            # The refusal comes on the head alone; the rest of the bomb follows it, as from a
            # client that does not wait for an answer.
            writer.write(head + bomb[:1024])
            answer = await asyncio.wait_for(reader.read(1000), 10)
            with contextlib.suppress(ConnectionError):
                writer.write(bomb[1024:])
                await writer.drain()
                await asyncio.wait_for(reader.read(), 10)
        finally:
            close_all([writer])
        assert answer.split(b" ", 2)[1] == b"415", answer[:200]
    await asyncio.sleep(0.3)
    spent = cpu_seconds(capped.pid) - before
    assert spent < 0.1, f"{spent:.2f} s of CPU for two refused bombs"
    assert await probe(capped) == 200
    assert (await capped.get("/models/download-progress"))["status"] == "idle"


# ---- 4: a .part changed by another program between two runs ----------------------------------


def swap_for_a_foreign_file(part: Path) -> None:
    """Another program puts its own file of the same size in place (a new inode)."""
    foreign = part.with_name("foreign")
    foreign.write_bytes(os.urandom(part.stat().st_size))
    os.replace(foreign, part)


def rewrite_in_place(part: Path) -> None:
    """Another program cuts the file to nothing and writes zeros back to its old size: the
    same inode and size, a new mtime."""
    size = part.stat().st_size
    with open(part, "r+b") as f:
        f.truncate(0)
        f.write(bytes(size))


@pytest.mark.parametrize("tamper", [swap_for_a_foreign_file, rewrite_in_place])
async def test_a_part_changed_between_runs_starts_over(
    make_daemon, mirror: Mirror, models, tamper
) -> None:
    variant = "big"
    daemon = await make_daemon().start()
    mirror.faults.rate = 2_000_000
    await start_download(daemon, variant)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_500_000)
    await daemon.post("/models/cancel-download")
    assert (await daemon.get("/models/download-progress"))["status"] == "cancelled"
    tamper(part_file(daemon, models[variant]))

    mirror.faults.rate = None
    await mirror.fresh_count()
    await start_download(daemon, variant)
    done = await daemon.wait_done()
    assert done["status"] == "completed", done  # the first try: no sha256 mismatch on the way
    assert mirror.cdn_bytes() == models[variant].size  # the whole file again, once
    assert sha256_of(final_file(daemon, models[variant])) == models[variant].sha256
    assert "starting over" in daemon.log()


# ---- 7: after a failed fdatasync the range it covered is not trusted --------------------------


async def test_an_eio_on_fdatasync_never_publishes_unsynced_bytes(
    server: BlobServer,  # noqa: F811 - the fixture from test_fetch_library
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fault at the syscall's wrapper: the first fdatasync fails with EIO and, as a disk
    that lost the pages would, the file reads back as zeros. The retry must fetch those bytes
    again, not hash the zeros (or the page cache's copy) and publish them."""
    real_fdatasync = os.fdatasync
    failures: list[int] = []

    def failing_fdatasync(fd: int) -> None:
        if failures:
            return real_fdatasync(fd)
        size = os.fstat(fd).st_size
        os.pwrite(fd, bytes(size), 0)  # what the disk holds: not the bytes written
        failures.append(size)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    dest = tmp_path / "model.gguf"
    journal = MemoryJournal()
    ref = FileRef(SIZE, SHA, url=f"{server.url}/blob")
    server.delay = 0.01  # the first fdatasync (after 0.1 s) lands mid-way
    async with hub_of(server) as hub:
        with pytest.raises(DownloadFailed, match="disk reported an error"):
            await FileFetch(ref, dest, hub=hub, journal=journal, options=OPTIONS).run()
        assert failures and failures[0] > 0
        assert journal.entry is not None and journal.entry.done == 0  # nothing was synced

        server.delay, server.served = 0.0, 0
        fetched = await FileFetch(ref, dest, hub=hub, journal=journal, options=OPTIONS).run()
    assert fetched.sha256 == SHA and dest.read_bytes() == DATA
    assert server.served == SIZE  # every unsynced byte fetched again


# ---- 6: a damaged schema is noticed at start; hostile row values are read safely --------------


async def test_a_dropped_table_exits_65_in_words(make_daemon, tmp_path: Path) -> None:
    daemon = await make_daemon().start()  # builds a whole database
    await daemon.close()
    with contextlib.closing(sqlite3.connect(daemon.data_dir / "lawchatd.sqlite3")) as db:
        db.execute("DROP TABLE parts")
        db.commit()
    env = {**daemon.env, "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-m", "lawchatd", "serve"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == EX_DATAERR, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lawchatd: cannot start: ") and "the table 'parts' is missing" in last
    assert "Traceback" not in result.stderr


async def test_hostile_values_in_a_row_do_not_break_the_model_list(make_daemon) -> None:
    daemon = await make_daemon().start()
    await daemon.close()
    with contextlib.closing(sqlite3.connect(daemon.data_dir / "lawchatd.sqlite3")) as db:
        db.execute(
            "INSERT INTO downloads (variant, filename, status, total_size, downloaded_size, "
            "started_at, error) VALUES ('tiny-a', x'00ff', 'pwned', 'lots', x'0102', 'soon', 7)"
        )
        db.commit()
    await daemon.start()
    available = await daemon.get("/models/available")
    assert available["available_models"]["tiny-a"]["downloaded"] is False
    assert (await daemon.get("/models/download-progress"))["status"] in ("idle", "error")


# ---- 5: an upstream's huge /api/ answer ------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


async def test_a_300_mb_api_answer_leaves_the_mirror_small(tmp_path: Path) -> None:
    sent = 0

    async def huge(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()  # no length to refuse it by: it must be read to know
        await resp.prepare(request)
        chunk = b" " * (1 << 20)
        with contextlib.suppress(ConnectionError):
            await resp.write(b"[")
            for _ in range(300):
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write(b"]")
        return resp

    app = web.Application()
    app.router.add_get("/api/models/{org}/{repo}/revision/{revision}", huge)  # the file list
    upstream_url, runner = await serve(app)
    port = free_port()
    (tmp_path / "office").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAWCHATD_", "HF_"))}
    argv = [sys.executable, "-m", "lawchatd", "mirror", str(tmp_path / "office")]
    argv += ["--port", str(port), "--upstream", upstream_url]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/api/models/org/repo"
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as http, http.get(url) as resp:
                    body = await resp.read()
                    reason = resp.headers.get("X-Error-Message", "")
                break
            await asyncio.sleep(0.1)
        assert len(body) < 1 << 20, len(body)  # a refusal in words, not the upstream's answer
        assert "too large" in reason, reason
        peak = peak_rss_mb(proc.pid)
        assert peak < 100, f"the mirror grew to {peak:.0f} MB"
        assert sent < 300 << 20  # the upstream was not read to the end
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        await runner.cleanup()


# ---- 7: the resolve step's deadline; an unverifiable certificate is not transient -------------


async def test_a_hub_that_trickles_its_head_is_retried_within_the_stall_timeout(
    tmp_path: Path,
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 302 Found\r\nX-Padding: " + b"a" * 1000:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)  # a byte at a time: every read resets sock_read

    hub = await asyncio.start_server(trickle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{hub.sockets[0].getsockname()[1]}"
    options = FetchOptions(max_retries=1, retry_backoff=0.01, stall_timeout=1.0)
    ref = FileRef(SIZE, repo="org/repo", path="model.gguf")
    began = asyncio.get_running_loop().time()
    try:
        async with aiohttp.ClientSession() as session:
            fetch = FileFetch(ref, tmp_path / "m.gguf", hub=HubClient(session, url, None),
                              options=options)  # fmt: skip
            with pytest.raises(DownloadFailed, match="did not answer within 1 s"):
                await fetch.run()
    finally:
        hub.close()
    assert asyncio.get_running_loop().time() - began < 5  # two tries of 1 s, not minutes
    assert fetch.counters.retries == 1


async def test_an_unverifiable_certificate_ends_the_download_at_once(tmp_path: Path) -> None:
    ca = trustme.CA()  # a firm's inspecting CA that this machine does not trust
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with served(web.Application(), ssl_context=context) as url:
        options = FetchOptions(max_retries=8, retry_backoff=0.5)
        ref = FileRef(SIZE, repo="org/repo", path="model.gguf")
        async with aiohttp.ClientSession() as session:
            fetch = FileFetch(ref, tmp_path / "m.gguf", hub=HubClient(session, url, None),
                              options=options)  # fmt: skip
            with pytest.raises(DownloadFailed, match="unknown authority: set LAWCHATD_CA_BUNDLE"):
                await fetch.run()
    assert fetch.counters.retries == 0


# ---- 7: the mirror's log masks presigned URLs; a bad request is one INFO line --------------


async def test_the_mirror_log_masks_signatures_and_bad_requests_are_one_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    (tmp_path / "org" / "repo").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAWCHATD_", "HF_"))}
    argv = [sys.executable, "-m", "lawchatd", "mirror", str(tmp_path), "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    signed = f"http://127.0.0.1:{port}/cdn/org/repo/a.gguf?Expires=99999999999&Signature=s3cr3t"
    try:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as http, http.get(signed) as resp:
                    await resp.read()
                break
            await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.0 400")
        writer.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"s3cr3t" not in err and b"Signature=***" in err
    assert b"Traceback" not in err and b"ERROR" not in err
    assert b"bad request from 127.0.0.1" in err


# ---- 7: misleading texts say what happened -----------------------------------------------------


async def test_redirects_and_huge_headers_are_told_as_they_are(tmp_path: Path) -> None:
    async def to_file(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "file:///etc/passwd"})

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path)

    async def huge(request: web.Request) -> web.Response:
        return web.Response(headers={"X-Huge": "a" * 9000})

    app = web.Application()
    app.router.add_route("HEAD", "/org/repo/resolve/main/{name}", to_file)
    app.router.add_get("/loop", loop)
    app.router.add_get("/huge", huge)
    async with served(app) as url, aiohttp.ClientSession() as session:
        ref = FileRef(SIZE, repo="org/repo", path="model.gguf")
        fetch = FileFetch(ref, tmp_path / "m.gguf", hub=HubClient(session, url, None))
        with pytest.raises(DownloadFailed, match="redirected model.gguf to file: address"):
            await fetch.run()
        for path, words in (("/loop", "redirected in a loop"), ("/huge", "longer than 8190")):
            with pytest.raises(aiohttp.ClientError) as caught:
                async with session.get(url + path) as resp:
                    await resp.read()
            assert words in in_words(caught.value), in_words(caught.value)


# ---- 7: `lawchatd verify`: a flipped byte with its mtime put back is found on demand ------------


async def test_lawchatd_verify_finds_a_flipped_byte_behind_a_restored_mtime(
    daemon: Daemon, models
) -> None:
    from tests.test_ops import finished, run_cli

    await start_download(daemon, "tiny-a")
    assert (await daemon.wait_done())["status"] == "completed"
    code, out, _ = await finished(await run_cli(daemon, "verify"))
    assert code == 0 and "tiny-a is intact" in out, out
    path = final_file(daemon, models["tiny-a"])
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a careful tool would leave it
    available = await daemon.get("/models/available")
    assert available["available_models"]["tiny-a"]["downloaded"] is True  # the record passes
    code, out, _ = await finished(await run_cli(daemon, "verify", "tiny-a"))
    assert code == 1 and "tiny-a changed on disk" in out, out
    available = await daemon.get("/models/available")
    assert available["available_models"]["tiny-a"]["downloaded"] is False
    status, reply = await daemon.post("/models/verify", {"model_variant": "nope"})
    assert status == 400, reply
