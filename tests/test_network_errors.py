"""Network failures in words: real servers that fail the way firms' networks do."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from lawchatd.config import Settings
from lawchatd.http import client_session, describe_error
from tests.harness import Mirror, free_port


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
