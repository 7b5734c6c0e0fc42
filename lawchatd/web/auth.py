"""Who is calling, and may they: the key in `Authorization: Bearer` (or X-API-Key), a browser
session's cookie, or `?token=` on the WebSocket (browsers cannot set headers there); then the
role table (lawchatd/web/roles.py) says whether the caller's role may use the route.

Without LAWCHATD_API_KEY the daemon is open (loopback only) and everyone acts as the admin;
a stored key sent anyway still names its holder, with its role.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from lawchatd.errors import Forbidden, Unauthorized
from lawchatd.state.audit import AuditWriteFailed
from lawchatd.web.auditing import action_name, record, record_as, target_of
from lawchatd.web.caller import caller_of, set_caller
from lawchatd.web.keys import SETTINGS
from lawchatd.web.people import PEOPLE, Person, wrong_key
from lawchatd.web.roles import Permission, allows, needed, refusal
from lawchatd.web.session import COOKIE, SESSIONS

TOKEN_QUERY_PATHS = ("/ws/progress",)


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if "X-API-Key" in request.headers:
        return request.headers["X-API-Key"]
    if request.path in TOKEN_QUERY_PATHS:
        return request.query.get("token")
    return None


async def _by_key(request: web.Request, presented: str) -> Person:
    person, why = await request.app[PEOPLE].by_key(presented)
    if person is not None:
        return person
    client = request.remote or "unknown"
    refused = wrong_key(request.app, client, why, f"{request.method} {request.path}")
    with contextlib.suppress(AuditWriteFailed):
        holder = request.app[PEOPLE].holder(presented)
        await record_as(request, holder, "auth.failed", "refused", client=client)
    raise refused


async def _by_cookie(request: web.Request) -> tuple[Person, str]:
    """The session's person and digest; 401 without a live session of a live key."""
    sessions = request.app[SESSIONS]
    digest = sessions.live(request.cookies.get(COOKIE))
    person = await request.app[PEOPLE].by_id(sessions.who(digest)) if digest else None
    if person is None or digest is None:
        raise Unauthorized("Invalid or missing API key", headers={"WWW-Authenticate": "Bearer"})
    return person, digest


@web.middleware
async def require_api_key(request: web.Request, handler):
    permission = needed(request)
    if permission is Permission.OPEN:
        return await handler(request)
    presented = _presented_key(request)
    session = None
    if request.app[SETTINGS].api_key is None:  # open: a stored key still names its holder
        person, _ = await request.app[PEOPLE].by_key(presented) if presented else (None, "")
        if person is not None:
            set_caller(request, person.caller)
    elif presented is not None:  # a key sent on purpose must be the right one
        set_caller(request, (await _by_key(request, presented)).caller)
    else:
        person, session = await _by_cookie(request)
        set_caller(request, person.caller)
    role = caller_of(request).role
    if not allows(role, permission):
        with contextlib.suppress(AuditWriteFailed):  # refused either way
            await record(request, action_name(request), target_of(request), "refused")
        raise Forbidden(refusal(role, request))
    if session is None:
        return await handler(request)
    with request.app[SESSIONS].holding(session, request.transport):
        return await handler(request)
