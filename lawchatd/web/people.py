"""Who a key belongs to: the bootstrap `LAWCHATD_API_KEY` (the firm's first admin) or one of
the stored keys (lawchatd/state/keys.py), and one limit on wrong keys per client address
shared by every route and the login.

A session cookie remembers the key's id (0: the bootstrap key), so a revoked or expired key
ends its browser sessions on their next request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from lawchatd.errors import TooManyRequests, Unauthorized
from lawchatd.state.keys import KeyStore, StoredKey
from lawchatd.web.caller import BOOTSTRAP, Caller, Role
from lawchatd.web.keys import SETTINGS
from lawchatd.web.loginlimit import FailureLimiter

log = logging.getLogger(__name__)
KEYSTORE = web.AppKey("keystore", KeyStore)
AUTH_LIMITER = web.AppKey("auth_limiter", FailureLimiter)
BOOTSTRAP_ID = 0
REFRESH_EVERY = 1.0  # a key revoked by `lawchatd keys revoke` is refused within this time


@dataclass(frozen=True)
class Person:
    key_id: int  # BOOTSTRAP_ID for LAWCHATD_API_KEY
    caller: Caller


def keys_match(presented: str, expected: SecretStr) -> bool:
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare them as bytes.
    given = presented.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected.get_secret_value().encode())


def caller_of_key(key: StoredKey) -> Caller:
    return Caller(key.name, Role(key.role), key.max_concurrent, key.tokens_per_minute)


class People:
    """Keys to callers, with the stored keys re-read at most every REFRESH_EVERY seconds."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._checked = 0.0
        self._touches: set[asyncio.Task] = set()

    async def _fresh(self) -> KeyStore:
        keys = self._app[KEYSTORE]
        if time.monotonic() - self._checked >= REFRESH_EVERY:
            self._checked = time.monotonic()
            await keys.refresh()
        return keys

    async def by_key(self, presented: str) -> tuple[Person | None, str]:
        """(the person, "") or (None, why not in words)."""
        bootstrap = self._app[SETTINGS].api_key
        if bootstrap is not None and keys_match(presented, bootstrap):
            return Person(BOOTSTRAP_ID, BOOTSTRAP), ""
        keys = await self._fresh()
        stored = keys.find(presented)
        if stored is None:
            return None, "Invalid or missing API key"
        state = stored.state(time.time())
        if state != "live":
            return None, f"This API key was {state}; ask the firm's administrator for a new one"
        self._touch(keys, stored)
        return Person(stored.id, caller_of_key(stored)), ""

    def holder(self, presented: str) -> str:
        """Who a refused key belonged to, for the audit trail: a revoked or expired key's
        name (someone who left trying their old key), else "(unknown key)"."""
        stored = self._app[KEYSTORE].find(presented)
        if stored is None:
            return "(unknown key)"
        return f"{stored.name} ({stored.state(time.time())} key)"

    async def by_id(self, key_id: int) -> Person | None:
        """The person a session belongs to, while their key is live."""
        if key_id == BOOTSTRAP_ID:
            return Person(BOOTSTRAP_ID, BOOTSTRAP)
        keys = await self._fresh()
        stored = keys.by_id(key_id)
        if stored is None or stored.state(time.time()) != "live":
            return None
        self._touch(keys, stored)
        return Person(stored.id, caller_of_key(stored))

    async def still_live(self, caller: Caller) -> bool:
        """Whether `caller`'s key still opens the daemon (a long-lived WebSocket asks again,
        so a revoked or expired person stops receiving)."""
        if caller is BOOTSTRAP:
            return True
        stored = (await self._fresh()).by_name(caller.name)
        return stored is not None and stored.state(time.time()) == "live"

    def _touch(self, keys: KeyStore, stored: StoredKey) -> None:
        if not keys.touch_due(stored):
            return
        task = asyncio.create_task(keys.touch(stored))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def close(self) -> None:
        if self._touches:
            await asyncio.wait(set(self._touches), timeout=2)


PEOPLE = web.AppKey("people", People)


def locked_out(app: web.Application, client: str) -> None:
    """TooManyRequests when `client` sent too many wrong keys lately. Called only after its
    key was found wrong: a right key is never refused during its address's lock-out."""
    if wait := app[AUTH_LIMITER].retry_after(client):
        raise TooManyRequests(f"Too many wrong API keys; try again in {wait} s", retry_after=wait)


def wrong_key(app: web.Application, client: str, why: str, where: str) -> Unauthorized:
    """Count a wrong key (refusing with 429 once there were too many) and the 401 to raise."""
    locked_out(app, client)
    app[AUTH_LIMITER].failed(client)
    log.warning("wrong API key on %s from %s", where, client)
    return Unauthorized(why, headers={"WWW-Authenticate": "Bearer"})


async def people_ctx(app: web.Application) -> AsyncIterator[None]:
    app[KEYSTORE] = await KeyStore.open(app[SETTINGS].db_path)
    app[AUTH_LIMITER] = FailureLimiter()
    app[PEOPLE] = People(app)
    try:
        yield
    finally:
        await app[PEOPLE].close()
        await app[KEYSTORE].close()
