"""State in SQLite: one row per download and its parts. The row is the truth."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import aiosqlite

from lawchatd.fetch.plan import Part
from lawchatd.fetch.verify import Verified
from lawchatd.state.schema import as_int, clean_row, damaged, expected_tables, problems

# Each entry migrates the schema from version N to N+1; never edit one that has shipped.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE downloads (
        variant          TEXT PRIMARY KEY,
        filename         TEXT NOT NULL,
        status           TEXT NOT NULL,
        phase            TEXT,
        commit_sha       TEXT,
        upstream_sha256  TEXT,
        cdn_etag         TEXT,
        total_size       INTEGER NOT NULL DEFAULT 0,
        downloaded_size  INTEGER NOT NULL DEFAULT 0,
        error            TEXT,
        started_at       REAL,
        updated_at       REAL,
        finished_at      REAL
    );
    CREATE TABLE parts (
        variant  TEXT NOT NULL REFERENCES downloads(variant) ON DELETE CASCADE,
        start    INTEGER NOT NULL,
        end      INTEGER NOT NULL,
        done     INTEGER NOT NULL,
        PRIMARY KEY (variant, start)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
    """,
    # Progress is recorded often without fsync (tagged with the boot id) and, less often,
    # after one: `synced` is what survives a power cut. Old rows were only written after one.
    """
    ALTER TABLE downloads ADD COLUMN boot_id TEXT;
    ALTER TABLE parts ADD COLUMN synced INTEGER NOT NULL DEFAULT 0;
    UPDATE parts SET synced = done;
    CREATE TABLE verified (
        filename  TEXT PRIMARY KEY,
        size      INTEGER NOT NULL,
        mtime_ns  INTEGER NOT NULL,
        inode     INTEGER NOT NULL,
        sha256    TEXT NOT NULL
    );
    """,
    # Variants waiting behind the running download (POST /models/download with "queue").
    """
    CREATE TABLE queue (
        variant   TEXT PRIMARY KEY,
        position  INTEGER NOT NULL,
        force     INTEGER NOT NULL DEFAULT 0
    );
    """,
    # People (lawchatd/state/keys.py): one row per key ever issued, only its sha256; a revoked
    # key keeps its row (the audit trail names it) and frees its name for a new key.
    # The audit trail (lawchatd/state/audit.py): append-only, each row hash-chained.
    """
    CREATE TABLE api_keys (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        name               TEXT NOT NULL,
        role               TEXT NOT NULL,
        digest             TEXT NOT NULL UNIQUE,
        created            REAL NOT NULL,
        last_used          REAL,
        expires            REAL,
        revoked            REAL,
        max_concurrent     INTEGER,
        tokens_per_minute  INTEGER
    );
    CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE revoked IS NULL;
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        time    TEXT NOT NULL,
        actor   TEXT NOT NULL,
        role    TEXT,
        action  TEXT NOT NULL,
        target  TEXT,
        outcome TEXT NOT NULL,
        detail  TEXT NOT NULL,
        prev    TEXT NOT NULL,
        hash    TEXT NOT NULL
    );
    CREATE INDEX audit_time ON audit(time);
    """,
    # Which .part file the parts describe (inode, size, mtime): fetch/identity.py.
    """
    ALTER TABLE downloads ADD COLUMN part_identity TEXT;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass
class DownloadRow:
    variant: str
    filename: str
    status: str  # idle | downloading | completed | error | cancelled
    phase: str | None = None
    commit_sha: str | None = None
    upstream_sha256: str | None = None
    cdn_etag: str | None = None
    total_size: int = 0
    downloaded_size: int = 0
    error: str | None = None
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    boot_id: str | None = None  # the kernel boot whose page cache holds the unsynced bytes
    part_identity: str | None = None  # the .part the parts describe (fetch/identity.py)


_ROW_COLUMNS = [f.name for f in fields(DownloadRow)]
# An upsert, not INSERT OR REPLACE: a replace deletes the row first, and the cascade its parts.
_UPSERT_ROW = (
    f"INSERT INTO downloads ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}) "
    f"ON CONFLICT(variant) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS[1:])
)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer lawchatd: this one must not touch it."""


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection is shared by every coroutine: without this lock another coroutine's
        # commit (or read) could land between the statements of one save.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        store = cls(db)
        try:
            # WAL keeps readers from blocking progress writes; NORMAL is durable enough with WAL.
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            (version,) = await cur.fetchone()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database was written by a newer lawchatd (schema {version} > {SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            await self._db.executescript(
                f"BEGIN; {_MIGRATIONS[number]} PRAGMA user_version={number + 1}; COMMIT;"
            )
        await self._check_schema()

    async def _check_schema(self) -> None:
        """Every table and column the migrations made is there (SchemaDamaged if not)."""
        found: dict[str, set[str]] = {}
        async with self._db.execute("SELECT name FROM sqlite_master WHERE type='table'") as cur:
            names = [r[0] for r in await cur.fetchall()]
        for name in names:
            async with self._db.execute(f'PRAGMA table_info("{name}")') as cur:
                found[name] = {r[1] for r in await cur.fetchall()}
        if said := problems(expected_tables(_MIGRATIONS), found):
            raise damaged(said)

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            return (await cur.fetchone())[0]

    async def _fetch(self, sql: str, args: tuple = ()) -> list[aiosqlite.Row]:
        async with self._lock, self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _write(self, statements: list[tuple[str, list | tuple]]) -> None:
        """Run the statements as one transaction, alone on the connection."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    if args and isinstance(args[0], (list, tuple)):
                        await self._db.executemany(sql, args)
                    else:
                        await self._db.execute(sql, args)
                await self._db.commit()
            except BaseException:
                await asyncio.shield(self._db.rollback())
                raise

    async def get(self, variant: str) -> DownloadRow | None:
        rows = await self._fetch("SELECT * FROM downloads WHERE variant = ?", (variant,))
        return clean_row(DownloadRow, dict(rows[0])) if rows else None

    async def all(self) -> list[DownloadRow]:
        rows = await self._fetch("SELECT * FROM downloads ORDER BY updated_at")
        return [clean_row(DownloadRow, dict(r)) for r in rows]

    async def save(self, row: DownloadRow, parts: list[Part] | None = None) -> None:
        """Write the row (and, when given, its parts) in one atomic transaction."""
        row.updated_at = time.time()
        values = asdict(row)
        statements: list[tuple[str, list | tuple]] = [
            (_UPSERT_ROW, [values[c] for c in _ROW_COLUMNS])
        ]
        if parts is not None:
            statements.append(("DELETE FROM parts WHERE variant = ?", (row.variant,)))
            if parts:
                statements.append(
                    (
                        "INSERT INTO parts (variant, start, end, done, synced) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(row.variant, p.start, p.end, p.done, p.synced) for p in parts],
                    )
                )
        await self._write(statements)

    async def parts(self, variant: str) -> list[Part]:
        rows = await self._fetch(
            "SELECT start, end, done, synced FROM parts WHERE variant = ? ORDER BY start",
            (variant,),
        )
        return [Part(*(as_int(r[k]) for k in ("start", "end", "done", "synced"))) for r in rows]

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            await self._write([("DELETE FROM meta WHERE key = ?", (key,))])
        else:
            await self._write(
                [("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))]
            )

    async def verified(self) -> dict[str, Verified]:
        rows = await self._fetch("SELECT * FROM verified")
        return {r["filename"]: clean_row(Verified, dict(r)) for r in rows}

    async def set_verified(self, filename: str, record: Verified | None) -> None:
        statements: list[tuple[str, list | tuple]] = [
            ("DELETE FROM verified WHERE filename = ?", (filename,))
        ]
        if record is not None:
            statements.append(
                (
                    "INSERT INTO verified (filename, size, mtime_ns, inode, sha256) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (record.filename, record.size, record.mtime_ns, record.inode, record.sha256),
                )
            )
        await self._write(statements)

    # ---- the download queue ------------------------------------------------------------------

    async def queued(self) -> list[tuple[str, bool]]:
        """(variant, force) waiting to download, first first."""
        rows = await self._fetch("SELECT variant, force FROM queue ORDER BY position")
        return [(r["variant"], bool(r["force"])) for r in rows]

    async def set_queue(self, entries: list[tuple[str, bool]]) -> None:
        """Replace the queue with `entries`, in this order (one transaction)."""
        statements: list[tuple[str, list | tuple]] = [("DELETE FROM queue", ())]
        if entries:
            rows = [(variant, i, int(force)) for i, (variant, force) in enumerate(entries)]
            statements.append(
                ("INSERT INTO queue (variant, position, force) VALUES (?, ?, ?)", rows)
            )
        await self._write(statements)
