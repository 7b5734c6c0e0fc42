"""aiohttp's low-level HTTP server, hardened: a cap on open connections, and JSON (one log
line, no traceback) for the requests its parser refuses before they reach the application.

aiohttp closes a connection that has not delivered a whole request head within
`keepalive_timeout` of connecting or of its last response (the runner is given
LAWCHATD_HEADER_TIMEOUT for it). That bounds how long a slow client lives; the cap bounds how
many there are: past it, the oldest connection that is not running a request (an idle
keep-alive, a half-sent head) is closed to make room, so a new client such as a `/healthz`
probe still gets in. When none is idle, the oldest one whose request body is still arriving
goes instead: a body trickled in a byte at a time would otherwise hold its slot for the whole
body timeout, and a few hundred of them lock everyone out. Only when every connection is
running a request whose body has arrived (or a WebSocket, capped on its own) is the
newcomer refused (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from lawchatd.errors import INTERNAL, LawchatdError, UserError
from lawchatd.web.errors import detail_response

log = logging.getLogger(__name__)
WARN_EVERY = 10.0
_TOO_MANY = json.dumps({"detail": "Too many connections; try again"}).encode()
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_TOO_MANY), _TOO_MANY)
)


class HardenedHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # too late for an answer: aiohttp closes it
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            error = LawchatdError(INTERNAL, status=status)
        else:  # a malformed request line, header or chunk: the client's, not worth a traceback
            reason = (message or HTTPStatus(status).phrase).splitlines()[0].rstrip(": ")[:100]
            log.info("bad request from %s: %s", request.remote, reason)
            error = UserError(f"Bad request: {reason}", status=status)
        response = detail_response(error)
        response.force_close()
        return response

    def log_exception(self, *args: object, **kwargs: object) -> None:
        # The unread rest of a refused body (say, a gzip one) failing to decode is not a bug.
        if isinstance(kwargs.get("exc_info"), RequestPayloadError):
            log.info("dropped the unreadable rest of a request body")
            return
        super().log_exception(*args, **kwargs)


class HardenedServer(web.Server):
    connection_limit = 1 << 30
    _last_warning = 0.0

    def __call__(self) -> RequestHandler:
        try:
            return HardenedHandler(self, loop=self._loop, **self._kwargs)
        except (AttributeError, TypeError):  # another aiohttp's internals: plain handler
            return super().__call__()

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        open_now = [h for h in self.connections if h.transport is not None]
        if len(open_now) <= self.connection_limit:
            return
        if time.monotonic() - self._last_warning > WARN_EVERY:
            self._last_warning = time.monotonic()
            log.warning(
                "%d client connections (limit %d): closing idle ones",
                len(open_now),
                self.connection_limit,
            )
        for evictable in (_idle, _body_unfinished):  # idle ones first, then slow bodies
            for old in open_now:  # oldest first
                if old is not handler and evictable(old):
                    old.force_close()
                    return
        transport.write(REFUSED)
        handler.force_close()


def _idle(handler: RequestHandler) -> bool:
    # aiohttp's flag for "a handler is running" (WebSockets and streams included); should a
    # future aiohttp lack it, every connection counts as busy: nobody is cut off by mistake.
    return not getattr(handler, "_request_in_progress", True)


def _body_unfinished(handler: RequestHandler) -> bool:
    """A request whose body has not all arrived: no work has started on it (every route reads
    its whole, small JSON body first), so closing it loses nothing but the client's time."""
    request = getattr(handler, "_current_request", None)
    if request is None:
        return False
    content = request.content
    return request.body_exists and not content.is_eof() and content.exception() is None


def harden(server: web.Server, connection_limit: int) -> None:
    """Give the runner's server (built by aiohttp) the behaviour above, before it listens."""
    server.__class__ = HardenedServer
    server.connection_limit = connection_limit  # type: ignore[attr-defined]
