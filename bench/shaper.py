"""A link that looks like the internet, on loopback: a TCP relay that shapes what comes back.

    python bench/shaper.py --port 9001 --upstream 127.0.0.1:9000 \
        --per-connection 40MB --total 125MB [--crawl 1MB] [--rtt-ms 20]

Every connection is capped at `--per-connection` (a CDN's per-stream limit), and all together at
`--total` (the office line). With `--crawl`, the first connection whose request asks for a byte
range that does not start at 0 gets that rate instead: one bad route among good ones. `--rtt-ms`
delays each connection's first answer by one round trip. Requests go upstream as they are.
Built on asyncio protocols (no task per chunk): reading pauses while the byte budget is spent
or the client's socket is full, so TCP itself carries the back-pressure to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time

RANGE = re.compile(rb"\r\nrange:\s*bytes=(\d+)-", re.IGNORECASE)
BURST = 0.005  # seconds of bytes a connection may send ahead: about one 256 KiB read at 40 MB/s


class Bucket:
    """Virtual-time pacing: each reservation starts when the previous one ends."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = time.monotonic()

    def reserve(self, n: int) -> float:
        """Seconds to wait before sending more after these n bytes."""
        now = time.monotonic()
        self.next = max(self.next, now) + n / self.rate
        return self.next - now - BURST


class Relay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.total = Bucket(args.total)
        self.crawled = False
        self.connections = 0


class Upstream(asyncio.Protocol):
    """The server's side: what it sends is paced, then written to the client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    """The downloader's side of one connection."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.bucket = Bucket(relay.args.per_connection)
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []  # request bytes before the upstream is connected
        self.waits = {"budget": False, "socket": False}
        self.started = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.relay.connections += 1
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.relay.args.upstream.rsplit(":", 1)
        try:
            await asyncio.sleep(self.relay.args.rtt_ms / 1000)
            _, self.upstream = await loop.create_connection(lambda: Upstream(self), host, int(port))
        except OSError:
            self.close()
            return
        for data in self.pending:
            self._forward(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self._maybe_crawl(data)
        if self.upstream is None:
            self.pending.append(data)
        else:
            self._forward(data)

    def _maybe_crawl(self, request: bytes) -> None:
        match = RANGE.search(request)
        if self.relay.args.crawl and not self.relay.crawled and match and int(match[1]) > 0:
            self.relay.crawled = True
            self.bucket = Bucket(self.relay.args.crawl)

    def _forward(self, data: bytes) -> None:
        assert self.upstream and self.upstream.transport
        self.upstream.transport.write(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        wait = max(self.bucket.reserve(len(data)), self.relay.total.reserve(len(data)))
        if wait > 0:
            self._hold("budget")
            asyncio.get_running_loop().call_later(wait, self._release, "budget")

    def pause_writing(self) -> None:
        self._hold("socket")

    def resume_writing(self) -> None:
        self._release("socket")

    def _hold(self, reason: str) -> None:
        self.waits[reason] = True
        if self.upstream and self.upstream.transport:
            self.upstream.transport.pause_reading()

    def _release(self, reason: str) -> None:
        self.waits[reason] = False
        transport = self.upstream.transport if self.upstream else None
        if transport and not any(self.waits.values()) and not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.close()

    def close(self) -> None:
        if self.transport:
            self.transport.close()


async def serve(args: argparse.Namespace) -> None:
    relay = Relay(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(relay), "127.0.0.1", args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"shaping on 127.0.0.1:{args.port}", flush=True)
    await stop.wait()
    server.close()


def rate(text: str) -> float:
    units = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "": 1}
    match = re.fullmatch(r"([\d.]+)\s*([a-zA-Z]*)", text.strip())
    if not match or match[2].lower() not in units:
        raise argparse.ArgumentTypeError(f"not a rate: {text}")
    return float(match[1]) * units[match[2].lower()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the server")
    parser.add_argument("--per-connection", type=rate, default=rate("40MB"))
    parser.add_argument("--total", type=rate, default=rate("125MB"))
    parser.add_argument("--crawl", type=rate, default=0.0)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
