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
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lawchatd.errors import TransientError
from lawchatd.state.keys import BUSY_TIMEOUT

log = logging.getLogger(__name__)
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


def _verify_file(path: Path) -> tuple[int, Broken | None]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        db.execute("BEGIN")  # one snapshot: the head and the rows agree
        anchor, head = _meta(db, "audit_anchor"), _meta(db, "audit_head")
        cursor = db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY id")
        cursor.arraysize = _BATCH
        return check_chain((dict(zip(COLUMNS, r, strict=True)) for r in cursor), anchor, head)


class AuditWriteFailed(TransientError):
    """The trail could not be written: the action it would record must not happen (503)."""

    code = "audit_unavailable"


class AuditTrail:
    """One SQLite connection used from worker threads, one transaction at a time (the lock):
    each append or batch is a single hop off the event loop. `append` waits for its row (an
    admin action must not happen unrecorded); `append_soon` (chat) joins the next batch."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        self._lock = asyncio.Lock()
        self._pending: list[Event] = []
        self._flushing: asyncio.Task | None = None
        self.healthy = True  # False after a failed write, until one succeeds again

    @classmethod
    async def open(cls, path: Path) -> AuditTrail:
        return cls(await asyncio.to_thread(_connect, path), path)

    async def close(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        async with self._lock:
            await asyncio.to_thread(self._db.close)

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
        return await self._write([Event(actor, action, target, outcome, role, detail)])

    def append_soon(
        self, actor: str, action: str, target: str | None, outcome: str, role: str | None, **detail
    ) -> None:
        """Append one event with the next batch; a failure is logged and marks the trail
        unhealthy (the chat route then pauses chat)."""
        self._pending.append(Event(actor, action, target, outcome, role, detail))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write(batch)
            except AuditWriteFailed as exc:
                log.error("%s: %d chat records lost", exc.message, len(batch))

    async def _write(self, events: list[Event]) -> int:
        try:
            async with self._lock:
                last = await asyncio.to_thread(_append_rows, self._db, events)
        except (sqlite3.Error, OSError) as exc:
            self.healthy = False
            raise AuditWriteFailed(
                f"the audit trail could not be written ({exc})", retry_after=5
            ) from exc
        self.healthy = True
        return last

    async def rows(self, since: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every row in order (from `since`, an ISO date or time, when given), read in batches."""
        after = 0
        while True:
            async with self._lock:
                batch = await asyncio.to_thread(_read_batch, self._db, after, since)
            if not batch:
                return
            for row in batch:
                yield row
            after = batch[-1]["id"]

    async def verify(self) -> tuple[int, Broken | None]:
        """(rows checked, the first break or None), read and hashed in a worker thread with
        its own read-only connection: the event loop stays free on a trail of any length."""
        return await asyncio.to_thread(_verify_file, self._path)

    async def prune(self, days: float, actor: str = "lawchatd") -> int:
        """Delete events older than `days`; the prune is itself recorded. Rows deleted."""
        cutoff = now_iso(time.time() - days * 86400)
        async with self._lock:
            deleted = await asyncio.to_thread(_delete_before, self._db, cutoff)
        if deleted:
            await self.append(
                actor, "audit.prune", None, "ok", None, deleted=deleted, before=cutoff, days=days
            )
        return deleted


@dataclass(frozen=True)
class Event:
    actor: str
    action: str
    target: str | None
    outcome: str
    role: str | None
    detail: dict[str, Any]


def _connect(path: Path) -> sqlite3.Connection:
    # Used by one worker thread at a time (the trail's lock), never two at once.
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _meta(db: sqlite3.Connection, key: str) -> tuple[int, str] | None:
    found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if not found:
        return None
    number, _, value = found[0].partition(":")
    return int(number), value


def _append_rows(db: sqlite3.Connection, events: list[Event]) -> int:
    """Chain and insert `events` in one transaction; the last row's id."""
    with _writing(db):  # the write lock first: no other process appends meanwhile
        last = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        next_id = max(seq[0] if seq else 0, last[0] if last else 0) + 1
        if last:
            prev = last[1]
        else:
            anchor = _meta(db, "audit_anchor")  # every row was pruned: link to the last one
            prev = anchor[1] if anchor else GENESIS
        rows = []
        for event in events:
            row = {
                "id": next_id,
                "time": now_iso(),
                "actor": event.actor,
                "role": event.role,
                "action": event.action,
                "target": event.target,
                "outcome": event.outcome,
                "detail": json.dumps(event.detail, sort_keys=True, ensure_ascii=False, default=str),
                "prev": prev,
            }
            row["hash"] = prev = row_hash(row)
            rows.append([row[c] for c in COLUMNS])
            next_id += 1
        db.executemany(_INSERT, rows)
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_head', ?)",
            (f"{next_id - 1}:{prev}",),
        )
    return next_id - 1


_INSERT = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def _read_batch(db: sqlite3.Connection, after: int, since: str | None) -> list[dict[str, Any]]:
    sql = f"SELECT {', '.join(COLUMNS)} FROM audit WHERE id > ?"
    args: tuple = (after,)
    if since:
        sql += " AND time >= ?"
        args += (since,)
    cursor = db.execute(sql + f" ORDER BY id LIMIT {_BATCH}", args)
    return [dict(zip(COLUMNS, r, strict=True)) for r in cursor.fetchall()]


def _delete_before(db: sqlite3.Connection, cutoff: str) -> int:
    with _writing(db):
        last_old = db.execute(
            "SELECT id, hash FROM audit WHERE time < ? ORDER BY id DESC LIMIT 1", (cutoff,)
        ).fetchone()
        if last_old is None:
            return 0
        deleted = db.execute("DELETE FROM audit WHERE id <= ?", (last_old[0],)).rowcount
        # The first surviving row (or the next append) links to the last deleted one.
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_anchor', ?)",
            (f"{last_old[0] + 1}:{last_old[1]}",),
        )
    return deleted


@contextlib.contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taking the write lock at once (BEGIN IMMEDIATE): committed when
    the block ends, rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
