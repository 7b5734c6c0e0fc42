"""A small forward proxy for the tests, like a firm's: CONNECT tunnels and absolute-URI requests.

It knows host names nobody else resolves (`hosts`), so an upstream under such a name can be
reached through the proxy alone; it can demand a user and password (407 otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field

from yarl import URL


@dataclass
class Proxy:
    port: int
    server: asyncio.Server
    hosts: dict[str, str]
    credentials: tuple[str, str] | None
    requests: list[str] = field(default_factory=list)  # "CONNECT h:p" or "GET http://..."
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def close(self) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        headers = [line for line in header_lines if line]
        self.requests.append(f"{method} {target}")
        if not self._authorized(headers):
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="firm"\r\nContent-Length: 0\r\n'
                b"Connection: close\r\n\r\n"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = await self._open(host, int(port), writer)
            if upstream is None:
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _pipe_both(reader, writer, *upstream)
            return
        url = URL(target)
        upstream = await self._open(url.host or "", url.port or 80, writer)
        if upstream is None:
            return
        kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
        forward = [f"{method} {url.raw_path_qs} {version}", *kept, "Connection: close", "", ""]
        upstream[1].write("\r\n".join(forward).encode("latin-1"))
        await _pipe_both(reader, writer, *upstream)

    def _authorized(self, headers: list[str]) -> bool:
        if self.credentials is None:
            return True
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        return f"proxy-authorization: basic {expected}".lower() in (h.lower() for h in headers)

    async def _open(self, host: str, port: int, writer: asyncio.StreamWriter):
        try:
            return await asyncio.open_connection(self.hosts.get(host, host), port)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return None


async def _pipe_both(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(
            _pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer)
        )
    finally:
        upstream_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def start_proxy(
    hosts: dict[str, str] | None = None, credentials: tuple[str, str] | None = None
) -> Proxy:
    proxy = Proxy(0, None, hosts or {}, credentials)  # type: ignore[arg-type]
    proxy.server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = proxy.server.sockets[0].getsockname()[1]
    return proxy
