"""The engine as a library: lawchatd.fetch without the daemon (no Settings, no Store, no catalog).

A FileRef against a real aiohttp server on loopback that serves a few MB with Range support
(and a Hub-style resolve): fetched, verified, resumed from the journal's parts after a cancel,
and refused with no final file when the sha256 is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lawchatd.fetch import (
    DownloadFailed,
    FetchOptions,
    FileFetch,
    FileJournal,
    FileRef,
    MemoryJournal,
    Phase,
)
from lawchatd.hub.client import HubClient
from lawchatd.testing.servers import served

SIZE = 24 << 20  # three parts of more than MIN_PART
DATA = os.urandom(SIZE)
SHA = hashlib.sha256(DATA).hexdigest()
COMMIT = "c" * 40
CHUNK = 64 << 10
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
# Small parts and quick records, so that a few MB make several connections and a cancel
# mid-way leaves parts in the journal.
OPTIONS = FetchOptions(connections=3, retry_backoff=0.01, record_seconds=0.01, sync_seconds=0.1)


class Server:
    """Serves DATA at /blob (Range, If-Range, a strong ETag) and a Hub resolve that redirects
    to it; `delay` slows every chunk down, `served` counts the body bytes sent."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.served = 0
        self.url = ""
        app = web.Application()
        app.router.add_get("/blob", self.blob)
        app.router.add_route("HEAD", "/{org}/{repo}/resolve/{rev}/{path:.+}", self.resolve)
        self.app = app

    async def resolve(self, request: web.Request) -> web.Response:
        if request.match_info["path"] != "model.gguf":
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        return web.Response(status=302, headers={
            "Location": f"{self.url}/blob", "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{SHA}"', "X-Linked-Size": str(SIZE),
        })  # fmt: skip

    async def blob(self, request: web.Request) -> web.StreamResponse:
        etag = '"blob-1"'
        start, end, status = 0, SIZE, 200
        match = _RANGE.fullmatch(request.headers.get("Range", ""))
        if match and request.headers.get("If-Range", etag) == etag:
            start, status = int(match[1]), 206
            end = int(match[2]) + 1 if match[2] else SIZE
        resp = web.StreamResponse(status=status, headers={"ETag": etag, "Accept-Ranges": "bytes"})
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{SIZE}"
        resp.content_length = end - start
        await resp.prepare(request)
        for offset in range(start, end, CHUNK):
            if self.delay:
                await asyncio.sleep(self.delay)
            chunk = DATA[offset : min(offset + CHUNK, end)]
            await resp.write(chunk)
            self.served += len(chunk)
        return resp


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server()
    async with served(server.app, shutdown_timeout=0.2) as server.url:
        yield server


@contextlib.asynccontextmanager
async def hub_of(server: Server) -> AsyncIterator[HubClient]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield HubClient(session, server.url, None)


async def test_a_url_is_fetched_verified_and_published(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "model.gguf"
    seen = []
    async with hub_of(server) as hub:
        ref = FileRef(SIZE, SHA, url=f"{server.url}/blob")
        fetched = await FileFetch(
            ref, dest, hub=hub, options=OPTIONS, on_progress=seen.append
        ).run()
    assert fetched.path == dest and fetched.sha256 == SHA and fetched.size == SIZE
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "out" / "model.gguf.part").exists()
    assert {Phase.RESOLVING, Phase.DOWNLOADING, Phase.VERIFYING} <= {p.phase for p in seen}


async def serve_chunked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    """The whole file in chunked transfer encoding, each chunk's closing CRLF sent a moment
    after its data: the reader has taken the data by then, so the chunk's end comes alone."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    for offset in range(0, len(data), 1 << 20):
        chunk = data[offset : offset + (1 << 20)]
        writer.write(b"%x\r\n" % len(chunk) + chunk)
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"\r\n")
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_a_chunked_body_is_read_across_its_chunk_boundaries(tmp_path: Path) -> None:
    server = await asyncio.start_server(
        lambda r, w: serve_chunked(r, w, DATA[: 8 << 20]), "127.0.0.1", 0
    )
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/blob"
    ref = FileRef(8 << 20, hashlib.sha256(DATA[: 8 << 20]).hexdigest(), url=url)
    options = dataclasses.replace(OPTIONS, connections=1)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            hub = HubClient(session, url, None)
            fetched = await FileFetch(ref, tmp_path / "model.gguf", hub=hub, options=options).run()
    finally:
        server.close()
        await server.wait_closed()
    assert fetched.path.read_bytes() == DATA[: 8 << 20]


async def test_a_hub_file_is_resolved_once_and_pinned_to_its_commit(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    async with hub_of(server) as hub:
        ref = FileRef(SIZE, repo="org/repo", path="model.gguf")  # the Hub's sha256 is checked
        fetched = await FileFetch(ref, dest, hub=hub, options=OPTIONS).run()
        assert (fetched.commit, fetched.sha256) == (COMMIT, SHA)
        resolved = await hub.resolve("org/repo", "main", "model.gguf")
        assert (resolved.commit, resolved.sha256, resolved.size) == (COMMIT, SHA, SIZE)
        missing = FileRef(SIZE, repo="org/repo", path="nope.gguf")
        with pytest.raises(DownloadFailed, match="not found"):
            await FileFetch(missing, tmp_path / "nope.gguf", hub=hub, options=OPTIONS).run()
    assert dest.read_bytes() == DATA


async def test_a_cancelled_fetch_resumes_from_the_journals_parts(
    server: Server, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    journal = FileJournal(tmp_path / "model.gguf.journal")
    ref = FileRef(SIZE, SHA, url=f"{server.url}/blob")
    server.delay = 0.01  # ~6 MB/s per connection: a cancel lands mid-way
    async with hub_of(server) as hub:
        first = FileFetch(ref, dest, hub=hub, journal=journal, options=OPTIONS)
        task = asyncio.create_task(first.run())
        while first.done < SIZE // 3:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        kept = await journal.load()
        assert kept is not None and SIZE // 3 <= kept.done < SIZE
        assert len(kept.parts) > 1 and not dest.exists()
        assert (tmp_path / "model.gguf.part").stat().st_size >= kept.done

        await asyncio.sleep(0.1)  # the server notices the closed connections
        server.delay, server.served = 0.0, 0
        second = FileFetch(ref, dest, hub=hub, journal=journal, options=OPTIONS)
        fetched = await second.run()
    assert fetched.sha256 == SHA and dest.read_bytes() == DATA
    await asyncio.to_thread(journal.forget)
    assert not journal.path.exists()
    in_flight = OPTIONS.connections * CHUNK  # what a cancelled write may not have recorded
    assert server.served <= SIZE - kept.done + in_flight, "the kept bytes were fetched again"


async def test_a_wrong_sha256_is_refused_and_leaves_no_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    journal = MemoryJournal()
    async with hub_of(server) as hub:
        ref = FileRef(SIZE, "0" * 64, url=f"{server.url}/blob")
        with pytest.raises(DownloadFailed, match="sha256 mismatch"):
            await FileFetch(ref, dest, hub=hub, journal=journal, options=OPTIONS).run()
    assert not dest.exists() and not (tmp_path / "model.gguf.part").exists()
    assert journal.entry is not None and journal.entry.parts == []  # nothing to resume from


async def test_a_gguf_check_refuses_bytes_that_are_no_model(server: Server, tmp_path: Path) -> None:
    async with hub_of(server) as hub:
        ref = FileRef(SIZE, SHA, url=f"{server.url}/blob", gguf=True)
        with pytest.raises(DownloadFailed, match="not a GGUF file"):
            await FileFetch(ref, tmp_path / "m.gguf", hub=hub, options=OPTIONS).run()
    assert not (tmp_path / "m.gguf").exists()


def test_a_file_ref_names_one_source() -> None:
    with pytest.raises(ValueError):
        FileRef(1)
    with pytest.raises(ValueError):
        FileRef(1, url="http://x/y", repo="o/r", path="y")
    assert FileRef(1, url="http://x/dir/y.gguf?sig=1").name == "y.gguf"


def test_the_daemons_settings_start_from_the_engines_defaults() -> None:
    from lawchatd.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    defaults = FetchOptions()
    for field in ("connections", "max_retries", "retry_backoff", "stall_timeout"):
        assert getattr(settings, field) == getattr(defaults, field), field
    assert {f.name for f in dataclasses.fields(FetchOptions)} >= {"connections", "stall_timeout"}
