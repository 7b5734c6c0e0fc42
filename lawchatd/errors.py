"""lawchatd's one error tree, and any exception in words.

    LawchatdError                 500  the rest: lawchatd, its machine or an upstream failed
    ├── UserError                 400  the request cannot be served as things stand
    │   ├── Unauthorized          401  invalid_api_key
    │   ├── Forbidden             403  permission_denied
    │   ├── NotFound              404  not_found
    │   ├── Conflict              409  conflict: Busy (a download runs), LoadInProgress
    │   ├── Unprocessable         422  invalid_value: BadBody (not strict JSON)
    │   ├── InsufficientStorage   507  NotEnoughSpace (disk)
    │   └── UnknownVariant (400 model_not_found), NoModelLoaded (503 model_not_loaded),
    │       PromptTooLong, InvalidRequest (400), the mirror's Refused, BadPath, Unsatisfiable
    └── TransientError            503  unavailable, with Retry-After: later may work
        ├── TooManyRequests       429  rate_limit_exceeded: QueueFull (chat requests waiting)
        ├── ModelWaitTimeout      503  model_not_ready (a swap takes longer than load_wait)
        └── TransientHubError          the Hub or CDN hiccuped: the engine's Transient retries

    The rest: ModelHostError, ModelLoadError (ModelTooLarge: 507), HubError (502),
    UpstreamError (the mirror's upstream), DownloadFailed, FetchFailed, the engine's
    RestartFromZero and OneStream signals, Stopped, NotGGUF, GGUFMetaError, CatalogError,
    CABundleError. (Start-up's errors and the CLI's carry exit codes instead: not here.)

Every error carries what an answer needs: an HTTP `status`, a machine `code` (OpenAI-style,
such as "model_not_found"), the request field at fault (`param`), the seconds to wait before a
retry (`retry_after`) and extra `headers`; its message is fit to show a user. The errors of
each package hang from this tree and declare their status and code once, as class attributes;
`lawchatd.web.errors` renders any of them as `{"detail"}`, OpenAI's `{"error"}` or the Hub's
X-Error-* headers. An exception outside the tree is a bug: a 500 that tells nothing.

This module imports nothing of lawchatd: everything imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Self

import aiohttp

INTERNAL = "Internal error; the daemon's log has the details"


class LawchatdError(Exception):
    """Root of lawchatd's errors. Keyword arguments override the class's defaults."""

    status: int = 500
    code: str | None = "internal_error"
    param: str | None = None
    retry_after: int | None = None
    reason: str | None = None  # the status line's phrase, for clients that show only that
    headers: Mapping[str, str] = {}  # never mutated: replaced per instance
    fields: Mapping[str, Any] = {}  # beside "detail" in the old app's shape

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param
        if retry_after is not None:
            self.retry_after = retry_after
        if headers:
            self.headers = dict(headers)

    def reworded(self, message: str, fields: Mapping[str, Any] | None = None) -> Self:
        """A copy of this error (status, code and all) told with what the caller was doing;
        `fields` go beside the message in `{"detail"}` bodies. A copy, because a task's
        exception is the same object for everyone who awaits it."""
        copy = type(self).__new__(type(self), *self.args)  # no __init__: its arguments vary
        copy.__dict__.update(self.__dict__)
        copy.message, copy.fields = message, dict(fields or {})
        return copy


class UserError(LawchatdError):
    """The request cannot be served as things stand: the user must change it (or the setup)."""

    status = 400
    code = "invalid_request"


class Unauthorized(UserError):
    status = 401
    code = "invalid_api_key"


class Forbidden(UserError):
    status = 403
    code = "permission_denied"


class NotFound(UserError):
    status = 404
    code = "not_found"


class Conflict(UserError):
    status = 409
    code = "conflict"


class Unprocessable(UserError):
    """A body or query that is not what the route takes (lawchatd's 422)."""

    status = 422
    code = "invalid_value"


class InsufficientStorage(UserError):
    status = 507
    code = "insufficient_storage"


class TransientError(LawchatdError):
    """Nothing to change: the same request later may work (clients are told when)."""

    status = 503
    code = "unavailable"
    retry_after = 1


class TooManyRequests(TransientError):
    status = 429
    code = "rate_limit_exceeded"


# --- any exception in words ----------------------------------------------------------------

_URL_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def in_words(exc: BaseException, *, unexpected: bool = False) -> str:
    """A sentence for users and logs, never with a password or a presigned URL's signature.

    Network failures say what to set (a proxy, a CA bundle); an exception group is told by
    the leaf that matters. `unexpected`: the error reached a catch-all, so say what the user
    can still do about it."""
    leaf = first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
    words = _URL_QUERY.sub(r"\1?...", _plain_words(leaf))
    if not unexpected or isinstance(leaf, LawchatdError):
        return words
    if "sqlite" in type(leaf).__module__ or type(leaf).__name__ == "OperationalError":
        return (
            f"the state database cannot be written ({words}); check that the data folder is "
            "writable and has free space, then try again"
        )
    if isinstance(leaf, OSError):
        return f"a file operation failed: {words}; check the data folder and try again"
    return f"the download stopped on an unexpected error ({words}); see the log"


def first_leaf(
    group: BaseExceptionGroup, prefer: tuple[type[BaseException], ...] = (LawchatdError,)
) -> BaseException:
    """The exception that matters in a group: the first of the `prefer` kinds, in their
    order, then any Exception, then whatever there is."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (*prefer, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def _plain_words(exc: BaseException) -> str:
    if isinstance(exc, LawchatdError):
        return exc.message or str(exc)
    if isinstance(exc, aiohttp.ClientError) and not isinstance(exc, TimeoutError):
        return _network_words(exc)
    text = _USERINFO.sub("***@", str(exc))
    if isinstance(exc, TimeoutError) and not text:
        return "no data arrived within the stall timeout"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return text or type(exc).__name__


def _network_words(exc: aiohttp.ClientError) -> str:
    """What failed on the network and, when known, what an admin should set."""
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
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.TooManyRedirects):  # its status is 0: say what happened
        return f"the server redirected in a loop ({len(exc.history)} redirects, never an answer)"
    if isinstance(exc, aiohttp.RedirectClientError | aiohttp.InvalidURL):
        where = exc.args[0] if exc.args else "an address"
        return f"the server redirected to {where}, an address lawchatd cannot follow"
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status == 400 and "Got more than" in str(exc.message):  # aiohttp's parser
            return "the server sent a header longer than 8190 bytes: not an answer lawchatd reads"
        return f"the server answered {exc.status} {exc.message}"
    return _USERINFO.sub("***@", str(exc)) or type(exc).__name__


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
