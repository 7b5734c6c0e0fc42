"""A file server on loopback, in its own threads, with the link faults of issue 18.

It runs outside the test's event loop (plain blocking sockets, one thread per connection), so
it sends as fast as the kernel takes the bytes while the client is busy, as an independent CDN
does. It serves one file with Range, a strong ETag and keep-alive, and can:

- `drop_after`: close every response cleanly (FIN) after that many body bytes;
- `rate`: pace each response to that many bytes/s;
- `line`: pace all responses together to that many bytes/s (a LAN's line: 1 Gbit/s is 125e6);
- `max_concurrent` + `refuse`: answer `403`, `429`, `503` or `reset` (RST) to a GET while that
  many responses are already being sent, as CDNs and proxies that allow a client one
  connection per file do.

It counts the body bytes it sent (`sent`), per request too (`requests`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_RANGE = re.compile(rb"\r\nrange: *bytes=(\d+)-(\d*)", re.IGNORECASE)
STEP = 64 << 10  # bytes per send() while pacing
_quiet = contextlib.suppress(OSError)  # a client that went away


@dataclass
class Sent:
    status: int
    start: int
    sent: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class LinkServer:
    data: bytes
    drop_after: int | None = None
    rate: int | None = None  # bytes/s per response
    line: int | None = None  # bytes/s of all responses together
    max_concurrent: int | None = None
    refuse: str = "403"  # what a GET beyond max_concurrent gets: 403, 429, 503 or reset
    requests: list[Sent] = field(default_factory=list)
    url: str = ""
    peak: int = 0  # the most responses sent at once

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._line_free = 0.0  # when the line is free for the next bytes (monotonic)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/file.bin"
        self._closed = False
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.requests)

    @property
    def drops(self) -> int:
        return sum(1 for r in self.requests if self.drop_after and r.sent == self.drop_after)

    @property
    def refused(self) -> int:
        return sum(1 for r in self.requests if r.status != 206 and r.status != 200)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for conn in list(self._connections):
            with _quiet:
                conn.close()

    # ---- the threads ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, _quiet:
            buffered = b""
            while not self._closed:
                while b"\r\n\r\n" not in buffered:
                    more = conn.recv(65536)
                    if not more:
                        return
                    buffered += more
                head, buffered = buffered.split(b"\r\n\r\n", 1)
                if not self._answer(conn, head):
                    return

    def _answer(self, conn: socket.socket, head: bytes) -> bool:
        """Answer one GET; False when the connection is to be closed."""
        size = len(self.data)
        match = _RANGE.search(head)
        start = int(match[1]) if match else 0
        end = min(int(match[2]) + 1, size) if match and match[2] else size
        with self._lock:
            full = self.max_concurrent is not None and self._active >= self.max_concurrent
            if not full:
                self._active += 1
                self.peak = max(self.peak, self._active)
        if full:
            return self._refuse(conn, start)
        record = Sent(206 if match else 200, start)
        self.requests.append(record)
        try:
            return self._send(conn, record, start, end)
        finally:
            with self._lock:
                self._active -= 1

    def _refuse(self, conn: socket.socket, start: int) -> bool:
        self.requests.append(Sent(0 if self.refuse == "reset" else int(self.refuse), start))
        if self.refuse == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closing with linger 0 sends an RST
        extra = "Retry-After: 1\r\n" if self.refuse in ("429", "503") else ""
        reason = {"403": "Forbidden", "429": "Too Many Requests", "503": "Unavailable"}
        conn.sendall(
            f"HTTP/1.1 {self.refuse} {reason[self.refuse]}\r\n{extra}"
            "Content-Length: 0\r\n\r\n".encode()
        )
        return True

    def _wait_for_line(self, size: int) -> None:
        """Book `size` bytes on the shared line and wait for their turn."""
        assert self.line is not None
        with self._lock:
            now = time.monotonic()
            start = max(now, self._line_free)
            self._line_free = start + size / self.line
        if start > now:
            time.sleep(start - now)

    def _send(self, conn: socket.socket, record: Sent, start: int, end: int) -> bool:
        size = len(self.data)
        status = "206 Partial Content" if record.status == 206 else "200 OK"
        content_range = ""
        if record.status == 206:
            content_range = f"Content-Range: bytes {start}-{end - 1}/{size}\r\n"
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Length: {end - start}\r\n{content_range}"
            f'ETag: "link-1"\r\nAccept-Ranges: bytes\r\n\r\n'.encode()
        )
        cut = end if self.drop_after is None else min(end, start + self.drop_after)
        view = memoryview(self.data)
        began = time.monotonic()
        offset = start
        while offset < cut:
            step = min(cut - offset, STEP if self.rate else 1 << 20)
            if self.line:
                self._wait_for_line(step)
            conn.sendall(view[offset : offset + step])
            offset += step
            record.sent += step
            if self.rate:
                ahead = (record.sent / self.rate) - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if cut < end:
            conn.shutdown(socket.SHUT_WR)  # a clean close (FIN) mid-body
            return False
        return True
