"""Network failures in words, from real servers that fail the way firms' networks do; and what
the download session must never send."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from lawchatd.config import Settings
from lawchatd.errors import in_words as describe_error
from lawchatd.hub.session import client_session
from lawchatd.testing.mirror_server import Mirror
from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import served


async def error_of(url: str, tmp_path: Path, **values: object) -> str:
    settings = Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]
    with pytest.raises(aiohttp.ClientError) as caught:
        async with client_session(settings) as session, session.get(url) as resp:
            await resp.read()
    return describe_error(caught.value)


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS port whose certificate names another host; and the CA file that signed it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("files.elsewhere.invalid").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], ca_file
    server.close()


async def test_a_certificate_for_another_name(tmp_path: Path, tls_server) -> None:
    port, ca_file = tls_server
    text = await error_of(f"https://127.0.0.1:{port}/x", tmp_path, ca_bundle=ca_file)
    assert text == "the certificate presented for 127.0.0.1 is for another name"


async def test_https_to_a_plain_http_port(tmp_path: Path, mirror: Mirror) -> None:
    port = mirror.url.rsplit(":", 1)[1]
    text = await error_of(f"https://127.0.0.1:{port}/x", tmp_path)
    assert text.startswith(f"the TLS handshake with 127.0.0.1:{port} failed")


async def test_nothing_listening(tmp_path: Path) -> None:
    port = free_port()
    text = await error_of(f"http://127.0.0.1:{port}/x", tmp_path)
    assert text == f"127.0.0.1:{port} refused the connection"


async def test_netrc_passwords_are_never_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc for the host must neither leak to it nor clash with the Hub token."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login clerk password s3cr3t\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", "none"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", echo)
    async with served(app) as url:
        settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
        async with client_session(settings) as session:
            for headers in ({}, {"Authorization": "Bearer hf_token"}):
                async with session.get(f"{url}/", headers=headers) as resp:
                    assert resp.status == 200
    assert seen == ["none", "Bearer hf_token"]


async def test_an_https_proxy_url_is_ignored_aloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "https://clerk:s3cr3t@proxy.firm.invalid:3129")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with caplog.at_level(logging.INFO):
        async with client_session(settings):
            pass
    assert "ignoring HTTPS_PROXY=https://proxy.firm.invalid:3129" in caplog.text
    assert "s3cr3t" not in caplog.text
