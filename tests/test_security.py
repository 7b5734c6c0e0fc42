"""Issue 9, driven like an attacker against the real daemon on loopback: raw bytes on a socket
for what no polite client sends, and requests a hostile page could make (the browser itself
is in test_security_browser.py). Each refusal is a JSON 4xx that changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import sqlite3
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import pytest

from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror


async def raw_request(daemon: Daemon, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send exactly these bytes; return the status and the JSON body of the answer."""
    parts = urlsplit(daemon.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"application/json" in headers.lower(), answer
    return int(status_line.split()[1]), json.loads(payload)


def head(method: str, path: str, *lines: str, host: str = "127.0.0.1", length: int = 0) -> bytes:
    fields = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", *lines]
    if length:
        fields.append(f"Content-Length: {length}")
    return ("\r\n".join(fields) + "\r\n").encode()


async def raw_post(
    daemon: Daemon, path: str, body: bytes, *lines: str, host: str = "127.0.0.1"
) -> tuple[int, dict]:
    return await raw_request(daemon, head("POST", path, *lines, host=host, length=len(body)), body)


async def nothing_changed(daemon: Daemon, mirror: Mirror) -> None:
    assert (await daemon.get("/models/download-progress"))["status"] == "idle"
    assert not any((daemon.data_dir / "models").iterdir())
    with contextlib.closing(sqlite3.connect(daemon.data_dir / "lawchatd.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM downloads").fetchone() == (0,)


# ---- item 1: CSRF, DNS rebinding, Content-Type ------------------------------------------------


@pytest.fixture
async def keyless(make_daemon: Callable[..., Daemon]) -> Daemon:
    return await make_daemon(LAWCHATD_API_KEY="").start()


DOWNLOAD = json.dumps({"model_variant": "tiny-small"}).encode()


async def test_a_foreign_origin_cannot_start_or_cancel_a_download(keyless: Daemon, mirror):
    for origin in ("https://evil.example", "http://127.0.0.1:1", "null"):
        status, reply = await raw_post(
            keyless,
            "/models/download",
            DOWNLOAD,
            f"Origin: {origin}",
            "Content-Type: text/plain",
        )
        assert status == 403 and "another site" in reply["detail"], (origin, reply)
        status, _ = await raw_request(
            keyless, head("POST", "/models/cancel-download", f"Origin: {origin}")
        )
        assert status == 403
    await nothing_changed(keyless, mirror)


async def test_a_rebound_host_name_reads_nothing(keyless: Daemon, mirror):
    for path in ("/models/available", "/healthz", "/", "/metrics"):
        status, reply = await raw_request(keyless, head("GET", path, host="evil.example:8000"))
        assert status == 421 and "Host" in reply["detail"], (path, reply)
    status, _ = await raw_post(
        keyless,
        "/models/download",
        DOWNLOAD,
        "Content-Type: application/json",
        host="evil.example",
    )
    assert status == 421
    await nothing_changed(keyless, mirror)


async def test_the_daemons_own_names_and_same_origin_pages_work(keyless: Daemon):
    port = urlsplit(keyless.url).port
    names = (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", "[::1]", socket.gethostname())
    for host in names:
        status, reply = await raw_request(keyless, head("GET", "/healthz", host=host))
        assert status == 200 and reply["status"] == "ok", host
    status, reply = await raw_request(
        keyless,
        head(
            "POST",
            "/models/cancel-download",
            f"Origin: http://127.0.0.1:{port}",
            host=f"127.0.0.1:{port}",
        ),
    )
    assert status == 200 and reply["cancelled"] is False


async def test_allowed_hosts_admits_a_reverse_proxys_name(make_daemon: Callable[..., Daemon]):
    daemon = await make_daemon(LAWCHATD_ALLOWED_HOSTS="law.firm.example, other.example").start()
    status, reply = await raw_request(daemon, head("GET", "/healthz", host="law.firm.example"))
    assert status == 200
    status, _ = await raw_request(
        daemon,
        head(
            "POST",
            "/models/cancel-download",
            f"Authorization: Bearer {API_KEY}",
            "Origin: https://law.firm.example",
            host="law.firm.example",
        ),
    )
    assert status == 200
    status, _ = await raw_request(daemon, head("GET", "/healthz", host="evil.example"))
    assert status == 421


async def test_allowed_origins_are_exact_scheme_host_and_port(make_daemon: Callable[..., Daemon]):
    """Issue 21 item 4: naming a host no longer admits pages from every port of it."""
    daemon = await make_daemon(
        LAWCHATD_API_KEY="",
        LAWCHATD_ALLOWED_HOSTS="127.0.0.1",
        LAWCHATD_ALLOWED_ORIGINS="http://127.0.0.1:9998, https://law.firm.example",
    ).start()

    async def cancel_from(origin: str) -> int:
        status, _ = await raw_request(
            daemon, head("POST", "/models/cancel-download", f"Origin: {origin}")
        )
        return status

    assert await cancel_from("http://127.0.0.1:9999") == 403
    assert await cancel_from("https://127.0.0.1:9998") == 403  # another scheme
    assert await cancel_from("http://127.0.0.1:9998") == 200
    assert await cancel_from("https://law.firm.example") == 200  # port 443 written or not
    assert await cancel_from("https://law.firm.example:443") == 200
    assert await cancel_from("https://law.firm.example:8443") == 403


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_body_that_is_not_declared_json_is_415(keyless: Daemon, mirror, content_type):
    lines = [f"Content-Type: {content_type}"] if content_type else []
    for path in ("/models/download", "/models/cancel-download", "/models/load"):
        status, reply = await raw_request(
            keyless, head("POST", path, *lines, length=len(DOWNLOAD)), DOWNLOAD
        )
        assert status == 415 and "application/json" in reply["detail"], (path, reply)
    await nothing_changed(keyless, mirror)


async def test_the_websocket_refuses_a_foreign_origin(keyless: Daemon):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(keyless.url + "/ws/progress", origin="https://evil.example")
        assert refused.value.status == 403
        async with session.ws_connect(keyless.url + "/ws/progress", origin=keyless.url) as ws:
            assert (await ws.receive_json())["type"] == "snapshot"


# ---- item 3: hostile bytes get a JSON 4xx -------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"model_variant": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_nested(100_000), "nested"),
        (_nested(40), "nested"),
        (b'{"model_variant": "tiny-a", "force": ' + b"9" * 5000 + b"}", "too large"),
        (b'{"model_variant": "tiny-a", "n": 1e999}', "too large"),
        (b'{"model_variant": NaN}', "not valid JSON"),
        (b'{"model_variant": "tiny-\xff"}', "UTF-8"),
        (b'{"model_variant": "tiny-\\ud800"}', "surrogate"),
    ],
)
async def test_hostile_json_is_a_422_and_changes_nothing(daemon: Daemon, mirror, payload, words):
    status, reply = await raw_post(
        daemon,
        "/models/download",
        payload,
        f"Authorization: Bearer {API_KEY}",
        "Content-Type: application/json",
    )
    assert status == 422 and words in reply["detail"], reply
    await nothing_changed(daemon, mirror)


async def test_a_lone_surrogate_in_chat_content_is_422(daemon: Daemon):
    payload = b'{"messages": [{"role": "user", "content": "hi \\udc80"}]}'
    status, reply = await raw_request(
        daemon,
        head(
            "POST",
            "/v1/chat/completions",
            f"Authorization: Bearer {API_KEY}",
            "Content-Type: application/json",
            length=len(payload),
        ),
        payload,
    )
    # {"detail"} here; OpenAI's {"error": {"message"}} once /v1 errors take that shape.
    message = reply.get("detail") or reply["error"]["message"]
    assert status in (400, 422) and "surrogate" in message, reply


async def test_a_bogus_charset_is_415(daemon: Daemon, mirror):
    status, reply = await raw_post(
        daemon,
        "/models/download",
        DOWNLOAD,
        f"Authorization: Bearer {API_KEY}",
        "Content-Type: application/json; charset=x-bogus",
    )
    assert status == 415 and "UTF-8" in reply["detail"]
    await nothing_changed(daemon, mirror)


@pytest.mark.parametrize("header", [b"X-API-Key: \xff\xfe", b"Authorization: Bearer \xc3\x28key"])
async def test_non_utf8_bytes_in_the_key_headers_are_401(daemon: Daemon, header):
    status, reply = await raw_request(daemon, head("GET", "/models/available") + header + b"\r\n")
    assert status == 401 and reply == {"detail": "Invalid or missing API key"}


@pytest.mark.parametrize(
    "request_line",
    [b"GET /\xff\xfe HTTP/1.1", b"BREW /models/available HTTP/1.1", b"GET / HTTP/9.9"],
)
async def test_what_the_http_parser_refuses_is_a_json_400(daemon: Daemon, request_line):
    status, reply = await raw_request(daemon, request_line + b"\r\nHost: 127.0.0.1\r\n")
    assert status == 400 and reply["detail"].startswith("Bad request: "), reply
    assert "Traceback" not in daemon.log()


async def test_a_compressed_body_is_415(daemon: Daemon, mirror):
    payload = gzip.compress(DOWNLOAD)
    status, reply = await raw_post(
        daemon,
        "/models/download",
        payload,
        f"Authorization: Bearer {API_KEY}",
        "Content-Type: application/json",
        "Content-Encoding: gzip",
    )
    assert status == 415 and "Content-Encoding" in reply["detail"]
    await nothing_changed(daemon, mirror)


async def test_the_dashboard_cannot_be_framed(daemon: Daemon):
    async with aiohttp.ClientSession() as session, session.get(daemon.url + "/") as resp:
        assert resp.status == 200
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


def _outside_address() -> str | None:
    """This machine's address on a network interface (what an office's browsers would use)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        address = probe.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


async def test_an_office_server_answers_to_the_address_it_was_reached_at(make_daemon):
    address = _outside_address()
    if address is None:
        pytest.skip("no network interface besides loopback")
    daemon = await make_daemon(LAWCHATD_HOST="0.0.0.0").start()  # with a key, as required
    daemon.url = daemon.url.replace("127.0.0.1", address).replace("0.0.0.0", address)
    port = urlsplit(daemon.url).port
    status, _ = await raw_request(daemon, head("GET", "/healthz", host=f"{address}:{port}"))
    assert status == 200
    status, _ = await raw_request(daemon, head("GET", "/healthz", host=f"10.255.255.254:{port}"))
    assert status == 421  # an address that is not this machine's names nothing here
