"""A cap on open client connections, so half-sent requests cannot eat the file descriptors.

aiohttp closes a connection that has not delivered a complete request head within
`keepalive_timeout` of connecting or of its last response (the runner gets
LAWCHATD_HEADER_TIMEOUT for it). That bounds how long each slow client lives; this bounds how
many there are: past the cap the oldest connection that is not in the middle of a request
(an idle keep-alive or a half-sent head) is closed to make room, so a new client, such as a
`/healthz` probe, still gets in. Only when every connection is busy is the newcomer refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)
WARN_EVERY = 10.0
_BODY = json.dumps({"detail": "Too many connections; try again"}).encode()
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


def _busy(handler: RequestHandler) -> bool:
    # aiohttp's own flag for "a handler is running" (WebSockets and streams included); when a
    # future aiohttp lacks it, count the connection as busy: nothing is cut off by mistake.
    return bool(getattr(handler, "_request_in_progress", True))


def cap_connections(server: web.Server, limit: int) -> None:
    """Hook `server.connection_made` (called by every new RequestHandler) to keep the cap."""
    original = server.connection_made
    last_warning = 0.0

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        nonlocal last_warning
        original(handler, transport)
        open_now = [h for h in server.connections if h.transport is not None]
        if len(open_now) <= limit:
            return
        if time.monotonic() - last_warning > WARN_EVERY:
            last_warning = time.monotonic()
            log.warning("%d client connections (limit %d): closing idle ones", len(open_now), limit)
        for old in open_now:  # oldest first
            if old is not handler and not _busy(old):
                old.force_close()
                return
        transport.write(REFUSED)
        handler.force_close()

    server.connection_made = connection_made  # type: ignore[method-assign]
