"""The firm's keys: one per person, with a role, stored as a sha256 of the key only.

A key is 32 random bytes (256 bits), so a plain sha256 cannot be reversed or guessed: no slow
password hash is needed, and a lookup by digest costs nothing. The daemon keeps the table in
memory and re-reads it when another connection (`lawchatd keys ...` while it runs) changed it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiosqlite

from lawchatd.errors import Conflict, NotFound, Unprocessable, UserError

ROLES = ("admin", "user", "viewer")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Names lawchatd acts under itself: the bootstrap key (web/caller.py) and the daemon's own
# actions (a resume at start, the audit trail's pruning). A person's key must not share them.
RESERVED_NAMES = frozenset({"admin", "lawchatd"})
TOUCH_EVERY = 60.0  # write a key's last use to disk at most this often
BUSY_TIMEOUT = 10.0  # seconds to wait for the other process's write (daemon and CLI share it)


class KeyProblem(UserError):
    """A key change that cannot be made (said in words)."""


@dataclass(frozen=True)
class StoredKey:
    id: int
    name: str
    role: str
    created: float
    last_used: float | None
    expires: float | None
    revoked: float | None
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None

    def state(self, now: float) -> str:
        """'live', 'revoked' or 'expired'."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "live"

    def public(self) -> dict:
        """What `keys list` and `GET /keys` show: never the key nor its digest."""
        return {
            "name": self.name,
            "role": self.role,
            "created": _iso(self.created),
            "last_used": _iso(self.last_used),
            "expires": _iso(self.expires),
            "revoked": _iso(self.revoked),
            "state": self.state(time.time()),
            "max_concurrent": self.max_concurrent,
            "tokens_per_minute": self.tokens_per_minute,
        }


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """43 characters of [A-Za-z0-9_-], prefixed so a leaked key is recognisable in a scan."""
    return "lck_" + secrets.token_urlsafe(32)


_COLUMNS = "id, name, role, created, last_used, expires, revoked, max_concurrent, tokens_per_minute"


def parse_expiry(value: str | None) -> float | None:
    """An ISO date or date-time (local time when no zone is given) as a Unix time."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Unprocessable(
            f"expires: {value!r} is not a date such as 2027-01-31 or 2027-01-31T18:00",
            param="expires",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.now().astimezone().tzinfo)
    at = moment.timestamp()
    if at <= time.time():
        raise Unprocessable(f"expires: {value!r} is already past", param="expires")
    return at


async def connect(path: Path) -> aiosqlite.Connection:
    """A connection that waits for the other process's write instead of failing at once."""
    db = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    return db


class KeyStore:
    """The `api_keys` table (created by the store's migration) and its in-memory copy."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._by_digest: dict[str, tuple[bytes, StoredKey]] = {}
        self._data_version: int | None = None
        self._touched: dict[int, float] = {}

    @classmethod
    async def open(cls, path: Path) -> KeyStore:
        store = cls(await connect(path))
        await store.refresh()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _fetch(self, sql: str, args: tuple = ()) -> list[tuple]:
        async with self._lock, self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def refresh(self, force: bool = False) -> None:
        """Re-read the table when another connection changed the database since the last read
        (`data_version` does not move for this connection's own writes: those pass `force`)."""
        (version,) = (await self._fetch("PRAGMA data_version"))[0]
        if version == self._data_version and not force:
            return
        rows = await self._fetch(f"SELECT {_COLUMNS}, digest FROM api_keys")
        self._by_digest = {row[-1]: (bytes.fromhex(row[-1]), StoredKey(*row[:-1])) for row in rows}
        self._data_version = version

    def find(self, presented: str) -> StoredKey | None:
        """The stored key `presented` is (live or not), compared in constant time."""
        wanted = digest_of(presented)
        entry = self._by_digest.get(wanted)
        if entry is None or not hmac.compare_digest(entry[0], bytes.fromhex(wanted)):
            return None
        return entry[1]

    def by_name(self, name: str) -> StoredKey | None:
        """The live (not revoked) key called `name`."""
        for _, key in self._by_digest.values():
            if key.name == name and key.revoked is None:
                return key
        return None

    def by_id(self, key_id: int) -> StoredKey | None:
        for _, key in self._by_digest.values():
            if key.id == key_id:
                return key
        return None

    def any_live(self) -> bool:
        now = time.time()
        return any(k.state(now) == "live" for _, k in self._by_digest.values())

    async def all(self) -> list[StoredKey]:
        await self.refresh(force=True)
        return sorted((k for _, k in self._by_digest.values()), key=lambda k: (k.name, k.id))

    async def add(
        self,
        name: str,
        role: str,
        expires: float | None = None,
        max_concurrent: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> tuple[str, StoredKey]:
        """A new key for `name`: (the key, shown this once; its record)."""
        if not NAME.match(name):
            raise KeyProblem(
                f"The name {name!r} cannot be used: use up to 64 letters, digits, '.', '_', "
                "'@' or '-', starting with a letter or digit"
            )
        if name.lower() in RESERVED_NAMES:
            raise KeyProblem(
                f"The name {name!r} is lawchatd's own (the bootstrap key and the daemon's own "
                "actions go by it in the audit trail): choose a person's name"
            )
        if role not in ROLES:
            raise KeyProblem(f"The role {role!r} does not exist: use one of {', '.join(ROLES)}")
        for what, limit in (("max_concurrent", max_concurrent), ("tokens_per_minute", tokens_per_minute)):
            if limit is not None and limit < 1:
                raise KeyProblem(
                    f"{what} must be at least 1 (leave it out for the role's default); "
                    f"{limit} would refuse every chat request of this key"
                )
        key = new_key()
        now = time.time()
        try:
            async with self._lock:
                await self._db.execute(
                    "INSERT INTO api_keys (name, role, digest, created, expires, max_concurrent,"
                    " tokens_per_minute) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, role, digest_of(key), now, expires, max_concurrent, tokens_per_minute),
                )
                await self._db.commit()
        except aiosqlite.IntegrityError:
            raise Conflict(
                f"{name!r} already has a key: revoke it first (lawchatd keys revoke {name})"
            ) from None
        await self.refresh(force=True)
        stored = self.by_name(name)
        assert stored is not None
        return key, stored

    async def revoke(self, name: str) -> StoredKey:
        now = time.time()
        async with self._lock:
            cur = await self._db.execute(
                "UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (now, name)
            )
            await self._db.commit()
        if cur.rowcount == 0:
            raise NotFound(f"No key named {name!r} is in use (lawchatd keys list shows them)")
        await self.refresh(force=True)
        revoked = [k for _, k in self._by_digest.values() if k.name == name and k.revoked == now]
        return revoked[0]

    def touch_due(self, key: StoredKey) -> bool:
        """Whether the key's use is to be written now: at most once a minute per key, so
        that a busy key costs one write a minute, not a task per request."""
        now = time.time()
        if now - self._touched.get(key.id, 0.0) < TOUCH_EVERY:
            return False
        self._touched[key.id] = now
        return True

    async def touch(self, key: StoredKey) -> None:
        """Record the key's last use (when `touch_due` says so)."""
        now = self._touched.get(key.id) or time.time()
        async with self._lock:
            await self._db.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (now, key.id))
            await self._db.commit()
