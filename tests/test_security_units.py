"""The small parts of issue 9's fixes, each on its own: strict JSON, the wrong-key limiter,
Host parsing, a bug becoming a JSON 500, and the CLI's requests declaring their JSON."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from lawchatd.client import DaemonClient
from lawchatd.config import Settings
from lawchatd.testing.servers import served
from lawchatd.web.body import MAX_DEPTH, BadBody, parse
from lawchatd.web.errors import json_errors
from lawchatd.web.guard import split_host
from lawchatd.web.loginlimit import FailureLimiter


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}",
        b'{"n": ' + b"1" * 20 + b"}",
        b'{"n": -' + b"9" * 19 + b"}",
        b'{"n": 1e400}',
        b'{"n": -Infinity}',
        b'{"s": "\\udfff"}',
        b'{"\\ud800": 1}',
        b'{"s": "\xc0\xaf"}',
    ],
)
def test_hostile_json_is_refused(raw: bytes) -> None:
    with pytest.raises(BadBody) as refused:
        parse(raw)
    assert refused.value.status == 422


def test_ordinary_json_passes() -> None:
    body = {"messages": [{"role": "user", "content": "é \U0001f600"}], "seed": -(2**63), "t": 0.5}
    assert parse(json.dumps(body).encode()) == body


def test_the_limiter_locks_after_five_failures_for_a_minute() -> None:
    now = [1000.0]
    limiter = FailureLimiter(limit=5, window=60, clock=lambda: now[0])
    for _ in range(4):
        limiter.failed("a")
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 60 and limiter.retry_after("b") == 0
    now[0] += 59.5
    assert limiter.retry_after("a") == 1
    now[0] += 1
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    limiter.succeeded("a")
    assert limiter.retry_after("a") == 0


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost.:80", "localhost"),
        ("[::1]:8000", "::1"),
        ("evil.example", "evil.example"),
        ("[::1", "::1"),
    ],
)
def test_host_names_are_split_from_ports(host: str, name: str) -> None:
    assert split_host(host)[0] == name


async def test_a_bug_is_a_json_500_without_the_traceback(caplog) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise ZeroDivisionError("secret detail of a bug")

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/", broken)
    async with (
        served(app) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/") as resp,
    ):
        assert resp.status == 500 and resp.content_type == "application/json"
        text = await resp.text()
    assert "secret detail" not in text and "Traceback" not in text
    assert "secret detail of a bug" in caplog.text  # the log has it


async def test_the_cli_declares_its_json_bodies() -> None:
    seen: list[tuple[str, str | None, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Content-Type"), await request.read()))
        return web.json_response({"status": "download_started", "message": "ok"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    async with served(app) as url:
        client = DaemonClient(Settings(_env_file=None, url=url))
        try:
            await client.call("POST", "/models/download", {"model_variant": "x"})
            await client.call("POST", "/models/cancel-download")
        finally:
            await client.close()
    assert seen[0][:2] == ("/models/download", "application/json")
    assert seen[1] == ("/models/cancel-download", "application/json", b"")
