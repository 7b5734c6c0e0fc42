"""Browser sessions: `POST /session {"api_key"}` sets an HttpOnly, SameSite=Strict cookie that
counts as the key; `DELETE /session` ends it.

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
from pydantic import BaseModel, ConfigDict, SecretStr, StrictStr

from lawchatd.errors import TooManyRequests, Unauthorized
from lawchatd.web.body import read_json
from lawchatd.web.keys import SETTINGS
from lawchatd.web.loginlimit import FailureLimiter

log = logging.getLogger(__name__)
COOKIE = "lawchatd_session"
LIFETIME = 7 * 24 * 3600.0
TOUCH_EVERY = 300.0  # write last use to disk at most this often per session
SCHEMA = "CREATE TABLE IF NOT EXISTS sessions (digest TEXT PRIMARY KEY, created REAL, used REAL)"
routes = web.RouteTableDef()


def keys_match(presented: str, expected: SecretStr) -> bool:
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare them as bytes.
    given = presented.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected.get_secret_value().encode())


class SessionStore:
    def __init__(self, db: aiosqlite.Connection, key: bytes, idle: float) -> None:
        self._db = db
        self._key = key
        self._idle = idle
        self._live: dict[str, list[float]] = {}  # digest -> [created, used, written]
        self._writes: set[asyncio.Task] = set()
        self._held: dict[str, set[asyncio.BaseTransport]] = {}  # WebSockets a session opened

    @classmethod
    async def open(cls, path: Path, key: bytes, idle: float) -> SessionStore:
        await asyncio.to_thread(_private_file, path)
        db = await aiosqlite.connect(path)
        try:
            await db.execute(SCHEMA)
            async with db.execute("SELECT digest, created, used FROM sessions") as cur:
                rows = await cur.fetchall()
        except BaseException:
            await db.close()
            raise
        store = cls(db, key, idle)
        now = time.time()
        for digest, created, used in rows:
            if not store._expired(created, used, now):
                store._live[digest] = [created, used, used]
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

    async def create(self) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        digest = self._digest(token)
        self._live[digest] = [now, now, now]
        await self._db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (digest, now, now))
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
LOGIN_LIMITER = web.AppKey("login_limiter", FailureLimiter)


async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    key = settings.api_key.get_secret_value().encode() if settings.api_key else b""
    app[SESSIONS] = await SessionStore.open(settings.sessions_path, key, settings.session_idle)
    app[LOGIN_LIMITER] = FailureLimiter()
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
    # Checked and counted with no await in between, so parallel guesses are counted too.
    limiter = request.app[LOGIN_LIMITER]
    client = request.remote or "unknown"
    if wait := limiter.retry_after(client):
        raise TooManyRequests(f"Too many wrong API keys; try again in {wait} s", retry_after=wait)
    if not keys_match(login.api_key, expected):
        limiter.failed(client)
        log.warning("wrong API key on POST /session from %s", client)
        raise Unauthorized("Invalid or missing API key")
    limiter.succeeded(client)
    token = await request.app[SESSIONS].create()
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
