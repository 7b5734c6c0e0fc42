"""Browser sessions: `POST /session {"api_key"}` sets an HttpOnly, SameSite=Strict cookie that
counts as the key (the bootstrap key or a person's own); `DELETE /session` ends it; `GET
/session` says who is logged in and their role, so the page shows what that role may do.

Only an HMAC of each token (keyed with the API key) is stored, in `DATA_DIR/sessions.sqlite3`
(mode 0600): a copy of the file opens no session, and changing the API key ends them all.
Sessions end after `LAWCHATD_SESSION_IDLE` seconds unused (12 h) and 7 days after login.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosqlite
from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr

from lawchatd.state.audit import AuditWriteFailed
from lawchatd.web.auditing import record, record_as
from lawchatd.web.body import read_json
from lawchatd.web.caller import caller_of, set_caller
from lawchatd.web.keys import SETTINGS
from lawchatd.web.people import PEOPLE, wrong_key
from lawchatd.web.roles import GRANTS, Permission

log = logging.getLogger(__name__)
COOKIE = "lawchatd_session"
LIFETIME = 7 * 24 * 3600.0
TOUCH_EVERY = 300.0  # write last use to disk at most this often per session
SCHEMA = "CREATE TABLE IF NOT EXISTS sessions (digest TEXT PRIMARY KEY, created REAL, used REAL)"
# Whose key opened the session (lawchatd/web/people.py: 0 is LAWCHATD_API_KEY).
ADD_WHO = "ALTER TABLE sessions ADD COLUMN who INTEGER NOT NULL DEFAULT 0"
routes = web.RouteTableDef()


class SessionStore:
    def __init__(self, db: aiosqlite.Connection, key: bytes, idle: float) -> None:
        self._db = db
        self._key = key
        self._idle = idle
        self._live: dict[str, list[float]] = {}  # digest -> [created, used, written, who]
        self._writes: set[asyncio.Task] = set()
        self._held: dict[str, set[asyncio.BaseTransport]] = {}  # WebSockets a session opened

    @classmethod
    async def open(cls, path: Path, key: bytes, idle: float) -> SessionStore:
        await asyncio.to_thread(_private_file, path)
        db = await aiosqlite.connect(path)
        try:
            await db.execute(SCHEMA)
            async with db.execute("PRAGMA table_info(sessions)") as cur:
                if "who" not in [row[1] for row in await cur.fetchall()]:
                    await db.execute(ADD_WHO)
            async with db.execute("SELECT digest, created, used, who FROM sessions") as cur:
                rows = await cur.fetchall()
        except BaseException:
            await db.close()
            raise
        store = cls(db, key, idle)
        now = time.time()
        for digest, created, used, who in rows:
            if not store._expired(created, used, now):
                store._live[digest] = [created, used, used, who]
        await store._db.execute(
            "DELETE FROM sessions WHERE used < ? OR created < ?", (now - idle, now - LIFETIME)
        )
        await store._db.commit()
        return store

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=2)
        await self._db.close()

    def _digest(self, token: str) -> str:
        return hmac.new(
            self._key, token.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()

    def _expired(self, created: float, used: float, now: float) -> bool:
        return now - used > self._idle or now - created > LIFETIME

    async def create(self, who: int) -> str:
        """A new session for the key `who` (its id); the token for the cookie."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        digest = self._digest(token)
        self._live[digest] = [now, now, now, who]
        await self._db.execute(
            "INSERT INTO sessions (digest, created, used, who) VALUES (?, ?, ?, ?)",
            (digest, now, now, who),
        )
        await self._db.commit()
        return token

    def live(self, token: str | None) -> str | None:
        """The session's digest when `token` opens a live session (None when not); marks it
        used (on disk now and then)."""
        if not token:
            return None
        digest = self._digest(token)
        entry = self._live.get(digest)
        now = time.time()
        if entry is None:
            return None
        if self._expired(entry[0], entry[1], now):
            del self._live[digest]
            return None
        entry[1] = now
        if now - entry[2] > TOUCH_EVERY:
            entry[2] = now
            task = asyncio.create_task(self._write_use(digest, now))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return digest

    def who(self, digest: str) -> int:
        """The id of the key that opened the live session `digest`."""
        return int(self._live[digest][3])

    async def _write_use(self, digest: str, now: float) -> None:
        await self._db.execute("UPDATE sessions SET used = ? WHERE digest = ?", (now, digest))
        await self._db.commit()

    @contextlib.contextmanager
    def holding(self, digest: str, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """While a long request (the WebSocket) runs on the say-so of the session `digest`
        (from `live`): a logout closes its connection too, so no tab keeps listening after it."""
        if transport is None:  # the client is already gone
            yield
            return
        self._held.setdefault(digest, set()).add(transport)
        try:
            yield
        finally:
            held = self._held.get(digest, set())
            held.discard(transport)
            if not held:
                self._held.pop(digest, None)

    async def end(self, token: str) -> None:
        digest = self._digest(token)
        for transport in self._held.pop(digest, set()):
            transport.close()
        self._live.pop(digest, None)
        await self._db.execute("DELETE FROM sessions WHERE digest = ?", (digest,))
        await self._db.commit()


def _private_file(path: Path) -> None:
    """Create the database readable by the daemon's user only (hashes, still nobody's business)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


SESSIONS = web.AppKey("sessions", SessionStore)


async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    key = settings.api_key.get_secret_value().encode() if settings.api_key else b""
    app[SESSIONS] = await SessionStore.open(settings.sessions_path, key, settings.session_idle)
    try:
        yield
    finally:
        await app[SESSIONS].close()


class Login(BaseModel):
    model_config = ConfigDict(extra="ignore")
    api_key: StrictStr


def _served_over_tls(request: web.Request) -> bool:
    # Behind a TLS-terminating proxy the browser still speaks https: mark the cookie Secure.
    forwarded = request.headers.get("X-Forwarded-Proto", "").lower()
    return request.secure or forwarded == "https"


@routes.post("/session")
async def post_session(request: web.Request) -> web.Response:
    login = await read_json(request, Login)
    expected = request.app[SETTINGS].api_key
    if expected is None:  # every route is open: no session to keep (and no rows to grow)
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    client = request.remote or "unknown"
    person, why = await request.app[PEOPLE].by_key(login.api_key)
    if person is None:
        # Checked and counted with no await in between, so parallel guesses are counted too.
        refused = wrong_key(request.app, client, why, "POST /session")
        with contextlib.suppress(AuditWriteFailed):
            holder = request.app[PEOPLE].holder(login.api_key)
            await record_as(request, holder, "login", "failed", client=client)
        raise refused
    set_caller(request, person.caller)
    await record(request, "login", None, "ok", client=client)
    token = await request.app[SESSIONS].create(person.key_id)
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE,
        token,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_served_over_tls(request),
    )
    return response


@routes.delete("/session")
async def delete_session(request: web.Request) -> web.Response:
    token = request.cookies.get(COOKIE)
    if token:
        await request.app[SESSIONS].end(token)
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


@routes.get("/session")
async def get_session(request: web.Request) -> web.Response:
    """Who the page is logged in as (or the key sent), their role and what it may do."""
    caller = caller_of(request)
    return web.json_response(
        {
            "name": caller.name,
            "role": str(caller.role),
            "may": sorted(str(p) for p in GRANTS[caller.role] if p is not Permission.OPEN),
        },
        headers={"Cache-Control": "no-store"},
    )
