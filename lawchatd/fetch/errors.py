"""The download engine's errors (on lawchatd's one tree): what the user is told, and what a
retry may cure."""

from __future__ import annotations

import errno

from lawchatd import errors
from lawchatd.errors import LawchatdError
from lawchatd.hub.client import TransientHubError


class DownloadFailed(LawchatdError):
    """The download stopped for a reason worth telling the user in these words."""


class Transient(TransientHubError):
    """A hiccup of the file server worth a retry after a backoff (`wait`, `note`: the Hub's)."""


class ConnectionLost(Transient):
    pass


class RangeRefused(Transient):
    """A 200 to a ranged request whose ETag shows the same file: ask for the range again."""


class RestartFromZero(LawchatdError):
    """The bytes on disk cannot be continued (the file changed): start over."""


class OneStream(LawchatdError):
    """The server keeps ignoring ranges for the same file: go on with one connection."""


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The leaf that decides a round's fate: a failure to tell, then a restart, then any."""
    return errors.first_leaf(group, prefer=(DownloadFailed, RestartFromZero))


def disk_error(exc: OSError, path: object, kept: int, size: int) -> DownloadFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadFailed(
            f"the disk is full ({path}): {kept} of {size} bytes are kept in the partial "
            "file; free some space and download again to resume"
        )
    if exc.errno == errno.EROFS:
        return DownloadFailed(f"the models folder is read-only: cannot write {path}")
    return DownloadFailed(f"cannot write {path}: {exc.strerror or exc}")
