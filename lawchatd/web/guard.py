"""What a hostile web page could send, refused before any handler runs.

- `Host` that is not one of the daemon's own names or addresses: 421 (DNS rebinding: a page
  on evil.example whose name now points at 127.0.0.1 would read and drive the daemon).
- A foreign `Origin` on a state-changing request or on the WebSocket: 403 (CSRF; also a page on
  another port of this host, which is "same-site" and so gets SameSite=Strict cookies). Other
  origins are admitted exactly, scheme://host:port, from LAWCHATD_ALLOWED_ORIGINS.
- A body on a state-changing request whose Content-Type is not JSON: 415 (the types an HTML
  form or a no-cors fetch can send without a preflight are text/plain, form-urlencoded and
  multipart; a request without any body is fine).

All three apply with and without an API key: a key does not stop a rebound page from reading
the open routes, and a session cookie rides along with same-site requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from lawchatd.config import Settings, normal_origin, split_host
from lawchatd.errors import Forbidden, UserError
from lawchatd.web.body import content_type_problem
from lawchatd.web.keys import SETTINGS

log = logging.getLogger(__name__)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
HOSTS = web.AppKey("own_host_names", set)


def own_host_names(settings: Settings) -> set[str]:
    """Names the Host header may carry: loopback, the bind address, this machine's name."""
    names = set(LOOPBACK_NAMES) | settings.extra_hosts
    if settings.host not in ("", "0.0.0.0", "::"):
        names.add(settings.host.lower().strip("[]"))
    hostname = socket.gethostname().lower()
    names.update({hostname, hostname.split(".")[0]})
    return names


async def learn_machine_names(app: web.Application) -> None:
    """Add the machine's full name and aliases (lawserver.firm.local) once the resolver
    answers: in a daemon thread, so a slow DNS delays neither the start nor the stop."""
    loop = asyncio.get_running_loop()
    names = app[HOSTS]

    def look_up() -> None:
        try:
            hostname = socket.gethostname()
            found = {socket.getfqdn(hostname)}
            name, aliases, _ = socket.gethostbyname_ex(hostname)
            found.update([name, *aliases])
        except OSError:
            return
        cleaned = {n.lower().rstrip(".") for n in found if n}
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(names.update, cleaned)

    threading.Thread(target=look_up, name="lawchatd-host-names", daemon=True).start()


def _is_own_address(name: str, request: web.Request) -> bool:
    """An IP literal the client connected to: it names this daemon, not a rebound domain."""
    try:
        address = _plain(ipaddress.ip_address(name))
    except ValueError:
        return False
    if address.is_loopback:
        return True
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return bool(sockname) and address == _plain(ipaddress.ip_address(sockname[0].split("%")[0]))


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d: compare the IPv4."""
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def host_allowed(request: web.Request) -> bool:
    settings = request.app[SETTINGS]
    if "*" in settings.extra_hosts:
        return True
    host = request.headers.get(hdrs.HOST)
    if host is None:  # HTTP/1.0 tools; every browser sends Host
        return True
    name, _ = split_host(host)
    return name in request.app[HOSTS] or _is_own_address(name, request)


def origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:  # not a browser, or a same-origin GET
        return True
    parts = urlsplit(origin.strip().lower())
    if not parts.hostname:  # "null": a sandboxed frame, a file:// page
        return False
    host = request.headers.get(hdrs.HOST, "").strip().lower()
    # The page's own origin, or one named exactly (scheme, host and port) in
    # LAWCHATD_ALLOWED_ORIGINS: a name alone would admit every port of that host.
    return parts.netloc == host or normal_origin(origin) in request.app[SETTINGS].extra_origins


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


@web.middleware
async def guard(request: web.Request, handler):
    if not host_allowed(request):
        name = split_host(request.headers.get(hdrs.HOST, ""))[0]
        log.warning("refused Host %a from %s (not in LAWCHATD_ALLOWED_HOSTS)", name, request.remote)
        raise UserError(
            f"This daemon does not answer to the name {name!r} (Host); "
            "its administrator can add the name to LAWCHATD_ALLOWED_HOSTS",
            status=421,
            code="misdirected_request",
        )
    state_changing = request.method not in SAFE_METHODS
    if (state_changing or _is_websocket(request)) and not origin_allowed(request):
        raise Forbidden("Requests from another site's page are refused")
    if state_changing and (problem := content_type_problem(request)):
        raise UserError(problem, status=415, code="unsupported_media_type")
    return await handler(request)


# The dashboard's page: its own scripts, styles and socket only, and never inside a frame (a
# page on another port of this host could frame it, cookie and all, and steer the clicks).
DASHBOARD_CSP = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path == "/":
        response.headers.setdefault("Content-Security-Policy", DASHBOARD_CSP)
