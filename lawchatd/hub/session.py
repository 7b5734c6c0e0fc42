"""The HTTP client for downloads on a firm's network: its proxy and its CA (its failures are put in
words by `lawchatd.errors.in_words`).

Proxies: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as curl reads them, or `LAWCHATD_PROXY` for the
daemon alone, which wins over the other two and still honours `NO_PROXY`. A proxy URL may carry `user:password@`: it is never logged nor put in an error.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr
from yarl import URL

from lawchatd import __version__
from lawchatd.errors import LawchatdError

log = logging.getLogger(__name__)


class NetworkSettings(Protocol):
    """The network settings read here (lawchatd.config.Settings has them all)."""

    @property
    def hf_endpoint(self) -> str: ...
    @property
    def proxy(self) -> SecretStr | None: ...
    @property
    def ssl_cert_file(self) -> Path | None: ...
    @property
    def ca_bundle(self) -> Path | None: ...
    @property
    def stall_timeout(self) -> float: ...


class CABundleError(LawchatdError):
    """A CA file that holds no certificate OpenSSL can read."""


def ssl_context(settings: NetworkSettings) -> ssl.SSLContext:
    """The system's trusted CAs plus SSL_CERT_FILE and LAWCHATD_CA_BUNDLE (added, not instead)."""
    context = ssl.create_default_context()
    # With SSL_CERT_FILE set, OpenSSL loads it *instead of* the system file: load that too.
    defaults = ssl.get_default_verify_paths()
    if defaults.openssl_cafile and Path(defaults.openssl_cafile).is_file():
        context.load_verify_locations(cafile=defaults.openssl_cafile)
    for extra in (settings.ssl_cert_file, settings.ca_bundle):
        if extra is None:
            continue
        try:
            context.load_verify_locations(cafile=str(extra))
        except ssl.SSLError as exc:
            raise CABundleError(f"{extra}: not a PEM file of CA certificates ({exc})") from None
    return context


def redact(url: str | URL) -> str:
    """The URL without its user and password."""
    parsed = URL(str(url))
    if parsed.user is None and parsed.password is None:
        return str(parsed)
    return str(parsed.with_user(None))


class ProxyRoute:
    """Which proxy each URL goes through: LAWCHATD_PROXY, else HTTPS_PROXY/HTTP_PROXY by scheme,
    none for a host in NO_PROXY. The environment is read once, when the session is made.

    Not aiohttp's trust_env: that also sends ~/.netrc passwords to the Hub and the CDN, and
    then fails every request that carries the Hub token.
    """

    def __init__(self, settings: NetworkSettings) -> None:
        self.env = urllib.request.getproxies()  # {"https": ..., "http": ..., "no": ...}
        self.forced = settings.proxy.get_secret_value() if settings.proxy else None

    def proxy_for(self, url: str | URL) -> str | None:
        """The proxy URL (credentials included) for `url`, or None to go direct."""
        target = URL(str(url))
        if target.host and urllib.request.proxy_bypass_environment(target.host, self.env):
            return None
        return _http_only(self.forced or self.env.get(target.scheme))

    def unsupported(self) -> list[str]:
        """Proxy variables set to something other than an http:// proxy (ignored)."""
        return [
            f"{scheme.upper()}_PROXY={redact(value)}"
            for scheme, value in self.env.items()
            if scheme in ("http", "https") and value and _http_only(value) is None
        ]


def _http_only(proxy: str | None) -> str | None:
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy  # `proxy:3128`, as curl reads it
    return proxy if proxy.startswith("http://") else None


def proxy_for(settings: NetworkSettings, url: str | URL) -> str | None:
    return ProxyRoute(settings).proxy_for(url)


def _request_class(route: ProxyRoute) -> type[aiohttp.ClientRequest]:
    class ProxiedRequest(aiohttp.ClientRequest):
        def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
            if kwargs.get("proxy") is None and (proxy := route.proxy_for(url)):
                # aiohttp sends the URL's user and password as Proxy-Authorization.
                kwargs["proxy"] = URL(proxy)
            super().__init__(method, url, **kwargs)

    return ProxiedRequest


def client_session(settings: NetworkSettings) -> aiohttp.ClientSession:
    """The session every download shares. Raises CABundleError for an unreadable CA file."""
    context = ssl_context(settings)
    route = ProxyRoute(settings)
    _log_route(settings, route)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context),
        # Bytes are read with a stall watchdog, not a total timeout: a 7 GB file takes its time.
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=settings.stall_timeout
        ),
        read_bufsize=2 << 20,
        auto_decompress=False,
        headers={"User-Agent": f"lawchatd/{__version__}"},
        request_class=_request_class(route),
    )


def _log_route(settings: NetworkSettings, route: ProxyRoute) -> None:
    proxy = route.proxy_for(settings.hf_endpoint)
    way = f"through the proxy at {redact(proxy)}" if proxy else "directly"
    log.info("downloads from %s go %s", settings.hf_endpoint, way)
    for variable in route.unsupported():
        log.warning("ignoring %s: only http:// proxies are supported", variable)
    for extra in (settings.ssl_cert_file, settings.ca_bundle):
        if extra is not None:
            log.info("trusting the CA certificates in %s as well as the system's", extra)
