"""The HTTP client for downloads on a firm's network: its proxy, its CA, failures in words.

Proxies: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as curl reads them, or `LAWCHATD_PROXY` for the
daemon alone, which wins over the other two and still honours `NO_PROXY`. A proxy URL may carry `user:password@`: it is never logged nor put in an error.
"""

from __future__ import annotations

import logging
import re
import ssl
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import SecretStr
from yarl import URL

from lawchatd import __version__

log = logging.getLogger(__name__)


class NetworkSettings(Protocol):
    """The network settings read here (lawchatd.process.config.Settings has them all)."""

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


class CABundleError(ValueError):
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


_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def describe_error(exc: BaseException) -> str:
    """A sentence for an admin: what failed on the network and, when known, what to set."""
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        where = f"the proxy at http://{exc.host}:{exc.port}"
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"{where} refused the connection"
        if isinstance(exc.os_error, TimeoutError):
            return f"{where} did not answer"
        return f"{where} cannot be reached: {exc.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        target = exc.request_info.real_url.host if exc.request_info else "the server"
        if exc.status == 407:
            return (
                f"the proxy asks for a user name and password (407) to reach {target}: write "
                "them into the proxy URL, http://user:password@host:port"
            )
        return f"the proxy would not open a connection to {target}: {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _certificate_problem(exc.host, exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"the TLS handshake with {exc.host}:{exc.port} failed: {_ssl_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return (
            f"the name {exc.host} cannot be resolved (if this network reaches the internet "
            "only through a proxy, set HTTPS_PROXY or LAWCHATD_PROXY)"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"{exc.host}:{exc.port} refused the connection"
        return f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}"
    if isinstance(exc, TimeoutError):
        return "the server stopped sending data (timed out)"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"the server answered {exc.status} {exc.message}"
    return _USERINFO.sub("***@", str(exc) or type(exc).__name__)


def _certificate_problem(host: str, error: BaseException) -> str:
    code = getattr(error, "verify_code", None)
    if code in (2, 19, 20, 21):  # no issuer certificate, self-signed chain, local issuer unknown
        return (
            f"the certificate of {host} is signed by an unknown authority: set LAWCHATD_CA_BUNDLE"
        )
    if code == 18:
        return f"the certificate of {host} is self-signed: set LAWCHATD_CA_BUNDLE to trust it"
    if code == 10:
        return f"the certificate of {host} has expired"
    if code in (62, 64):  # host name or IP address mismatch
        return f"the certificate presented for {host} is for another name"
    reason = getattr(error, "verify_message", None) or _ssl_reason(error)
    return f"the certificate of {host} was rejected: {reason}"


def _ssl_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    if reason == "WRONG_VERSION_NUMBER":
        return "the server does not speak TLS on that port"
    return str(reason or error)
