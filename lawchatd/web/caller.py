"""Who sent a request: the name of the key it came with and that key's role.

The auth middleware decides and stores it on the request; routes, the audit trail and chat
admission read it with `caller_of`. A daemon without any key (loopback only) and the bootstrap
`LAWCHATD_API_KEY` act as the firm's administrator."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web


class Role(StrEnum):
    ADMIN = "admin"  # everything
    USER = "user"  # chat, read the models and progress, its own usage
    VIEWER = "viewer"  # read-only dashboard


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    # Per-key limits on chat (None: the role's default from the settings).
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None


BOOTSTRAP = Caller("admin", Role.ADMIN)
_KEY = web.RequestKey("caller", Caller)


def set_caller(request: web.Request, caller: Caller) -> None:
    request[_KEY] = caller


def caller_of(request: web.Request) -> Caller:
    return request.get(_KEY, BOOTSTRAP)
