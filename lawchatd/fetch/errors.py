"""One error hierarchy: what the user is told, and what a retry may cure."""

from __future__ import annotations

import errno
import re

import aiohttp

from lawchatd.hub.client import TransientHubError
from lawchatd.hub.session import describe_error


class DownloadFailed(Exception):
    """The download stopped for a reason worth telling the user in these words."""


class Transient(TransientHubError):
    """A hiccup of the file server worth a retry after a backoff (`wait`, `note`: the Hub's)."""


class ConnectionLost(Transient):
    pass


class RangeRefused(Transient):
    """A 200 to a ranged request whose ETag shows the same file: ask for the range again."""


class RestartFromZero(Exception):
    """The bytes on disk cannot be continued (the file changed): start over."""


class OneStream(Exception):
    """The server keeps ignoring ranges for the same file: go on with one connection."""


_URL_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")


def describe(exc: BaseException) -> str:
    """An exception in words for logs and the `error` field, without presigned URL signatures."""
    if isinstance(exc, BaseExceptionGroup):
        return describe(first_leaf(exc))
    if isinstance(exc, aiohttp.ClientError) and not isinstance(exc, TimeoutError):
        # Proxy, TLS and DNS failures in words an admin can act on (and without passwords).
        return _URL_QUERY.sub(r"\1?...", describe_error(exc))
    text = _URL_QUERY.sub(r"\1?...", str(exc))
    if isinstance(exc, TimeoutError) and not text:
        return "no data arrived within the stall timeout"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return text or type(exc).__name__


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The exception that matters in a group: a user error first, then any other."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (DownloadFailed, RestartFromZero, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def disk_error(exc: OSError, path: object, kept: int, size: int) -> DownloadFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadFailed(
            f"the disk is full ({path}): {kept} of {size} bytes are kept in the partial "
            "file; free some space and download again to resume"
        )
    if exc.errno == errno.EROFS:
        return DownloadFailed(f"the models folder is read-only: cannot write {path}")
    return DownloadFailed(f"cannot write {path}: {exc.strerror or exc}")


def unexpected(exc: BaseException) -> str:
    """Text for an error nobody planned for: still a sentence a user can act on."""
    leaf = first_leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
    if isinstance(leaf, OSError):
        return f"a file operation failed: {describe(leaf)}; check the data folder and try again"
    name = type(leaf).__name__
    if "sqlite" in type(leaf).__module__ or name == "OperationalError":
        return (
            f"the state database cannot be written ({describe(leaf)}); check that the data "
            "folder is writable and has free space, then try again"
        )
    return f"the download stopped on an unexpected error ({describe(leaf)}); see the log"
