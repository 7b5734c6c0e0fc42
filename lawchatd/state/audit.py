"""The audit trail: who did what, appended to the `audit` table, each row hash-chained.

Each row's `hash` is sha256(previous row's hash + the row's canonical JSON), so an edited row
no longer matches its hash and a deleted row breaks the link of the row after it. The newest
row's id and hash are also kept in `meta` (`audit_head`), which catches rows cut off the end;
pruning keeps the first surviving row's `prev` as the chain's new start (`audit_anchor`) and is
itself recorded. Appends run in one `BEGIN IMMEDIATE` transaction, so the daemon and the
`lawchatd keys` command (another process) never fork the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from lawchatd.errors import TransientError
from lawchatd.state.keys import connect

GENESIS = "0" * 64
COLUMNS = ("id", "time", "actor", "role", "action", "target", "outcome", "detail", "prev", "hash")
_BATCH = 5000


def now_iso(at: float | None = None) -> str:
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


HASHED = COLUMNS[:-1]  # every column but the hash itself


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers: a JSON array of its columns in COLUMNS' order."""
    values = [row[k] for k in HASHED]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(row["prev"].encode() + canonical(row)).hexdigest()


@dataclass(frozen=True)
class Broken:
    """Where the chain first breaks, in words."""

    row_id: int
    reason: str

    def __str__(self) -> str:
        return f"row {self.row_id}: {self.reason}"


def check_chain(
    rows: Iterable[dict[str, Any]], anchor: tuple[int, str] | None, head: tuple[int, str] | None
) -> tuple[int, Broken | None]:
    """(rows checked, the first break or None). `anchor` is (first id, its prev) after a
    prune; `head` the (id, hash) the last append left in `meta`."""
    expected_prev = anchor[1] if anchor else GENESIS
    expected_id = anchor[0] if anchor else 1
    count = 0
    last: dict[str, Any] | None = None
    for row in rows:
        count += 1
        if row["prev"] != expected_prev:
            gap = (
                ""
                if row["id"] == expected_id
                else f" (rows {expected_id}..{row['id'] - 1} are missing)"
            )
            return count, Broken(
                row["id"], f"does not follow the row before it: a row was deleted or edited{gap}"
            )
        if row_hash(row) != row["hash"]:
            return count, Broken(row["id"], "was edited after it was written (its hash differs)")
        expected_prev = row["hash"]
        expected_id = row["id"] + 1
        last = row
    if head is not None:
        if last is None or last["id"] < head[0]:
            after = last["id"] if last else 0
            return count, Broken(head[0], f"rows after {after} were deleted (up to row {head[0]})")
        if last["id"] == head[0] and last["hash"] != head[1]:
            return count, Broken(head[0], "is not the row the last append wrote")
    return count, None


def _verify_file(
    path: Path, anchor: tuple[int, str] | None, head: tuple[int, str] | None
) -> tuple[int, Broken | None]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        cursor = db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY id")
        cursor.arraysize = _BATCH
        return check_chain((dict(zip(COLUMNS, r, strict=True)) for r in cursor), anchor, head)


class AuditWriteFailed(TransientError):
    """The trail could not be written: the action it would record must not happen (503)."""

    code = "audit_unavailable"


class AuditTrail:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        self._lock = asyncio.Lock()
        self.healthy = True  # False after a failed append, until one succeeds again

    @classmethod
    async def open(cls, path: Path) -> AuditTrail:
        db = await connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA synchronous=NORMAL")
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def append(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        outcome: str = "ok",
        role: str | None = None,
        **detail: Any,
    ) -> int:
        """Append one event; its id. Raises AuditWriteFailed (in words) when it cannot."""
        try:
            async with self._lock:
                return await self._append(actor, action, target, outcome, role, detail)
        except (aiosqlite.Error, OSError) as exc:
            self.healthy = False
            raise AuditWriteFailed(
                f"the audit trail could not be written ({exc})", retry_after=5
            ) from exc

    async def _append(self, actor, action, target, outcome, role, detail) -> int:
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1") as cur:
                last = await cur.fetchone()
            async with db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'") as cur:
                seq = await cur.fetchone()
            row = {
                "id": max(seq[0] if seq else 0, last[0] if last else 0) + 1,
                "time": now_iso(),
                "actor": actor,
                "role": role,
                "action": action,
                "target": target,
                "outcome": outcome,
                "detail": json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str),
                "prev": last[1] if last else await self._anchor_prev(),
            }
            row["hash"] = row_hash(row)
            await db.execute(
                f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [row[c] for c in COLUMNS],
            )
            await db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_head', ?)",
                (f"{row['id']}:{row['hash']}",),
            )
            await db.commit()
        except BaseException:
            await asyncio.shield(db.rollback())
            raise
        self.healthy = True
        return row["id"]

    async def _anchor_prev(self) -> str:
        """The chain's start when every row was pruned: the last pruned row's hash."""
        anchor = await self._meta("audit_anchor")
        return anchor[1] if anchor else GENESIS

    async def _meta(self, key: str) -> tuple[int, str] | None:
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            found = await cur.fetchone()
        if not found:
            return None
        number, _, value = found[0].partition(":")
        return int(number), value

    async def rows(self, since: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every row in order (from `since`, an ISO date or time, when given), read in batches."""
        after = 0
        while True:
            sql = f"SELECT {', '.join(COLUMNS)} FROM audit WHERE id > ?"
            args: tuple = (after,)
            if since:
                sql += " AND time >= ?"
                args += (since,)
            async with self._db.execute(sql + f" ORDER BY id LIMIT {_BATCH}", args) as cur:
                batch = [dict(r) for r in await cur.fetchall()]
            if not batch:
                return
            for row in batch:
                yield row
            after = batch[-1]["id"]

    async def verify(self) -> tuple[int, Broken | None]:
        """(rows checked, the first break or None), read and hashed in a worker thread with
        its own read-only connection: the event loop stays free on a trail of any length."""
        anchor = await self._meta("audit_anchor")
        head = await self._meta("audit_head")
        return await asyncio.to_thread(_verify_file, self._path, anchor, head)

    async def prune(self, days: float, actor: str = "lawchatd") -> int:
        """Delete events older than `days`; the prune is itself recorded. Rows deleted."""
        cutoff = now_iso(time.time() - days * 86400)
        async with self._lock:
            db = self._db
            await db.execute("BEGIN IMMEDIATE")
            try:
                async with db.execute(
                    "SELECT id, hash FROM audit WHERE time < ? ORDER BY id DESC LIMIT 1", (cutoff,)
                ) as cur:
                    last_old = await cur.fetchone()
                if last_old is None:
                    await db.rollback()
                    return 0
                cur = await db.execute("DELETE FROM audit WHERE id <= ?", (last_old[0],))
                deleted = cur.rowcount
                # The first surviving row (or the next append) links to the last deleted one.
                await db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_anchor', ?)",
                    (f"{last_old[0] + 1}:{last_old[1]}",),
                )
                await db.commit()
            except BaseException:
                await asyncio.shield(db.rollback())
                raise
        await self.append(
            actor, "audit.prune", None, "ok", None, deleted=deleted, before=cutoff, days=days
        )
        return deleted
