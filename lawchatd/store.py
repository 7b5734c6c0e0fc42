"""State in SQLite: one row per download and its parts. The row is the truth."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import aiosqlite

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


@dataclass
class Part:
    """Bytes [start, end) of the file; `done` of them are on disk from `start` on."""

    start: int
    end: int
    done: int = 0

    @property
    def offset(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.offset


_ROW_COLUMNS = [f.name for f in fields(DownloadRow)]
# An upsert, not INSERT OR REPLACE: a replace deletes the row first, and the cascade its parts.
_UPSERT_ROW = (
    f"INSERT INTO downloads ({', '.join(_ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)}) "
    f"ON CONFLICT(variant) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS[1:])
)


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

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
            raise RuntimeError(
                f"the database was written by a newer lawchatd (schema {version} > {SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            await self._db.executescript(
                f"BEGIN; {_MIGRATIONS[number]} PRAGMA user_version={number + 1}; COMMIT;"
            )

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            return (await cur.fetchone())[0]

    async def get(self, variant: str) -> DownloadRow | None:
        async with self._db.execute("SELECT * FROM downloads WHERE variant = ?", (variant,)) as cur:
            row = await cur.fetchone()
        return DownloadRow(**dict(row)) if row else None

    async def all(self) -> list[DownloadRow]:
        async with self._db.execute("SELECT * FROM downloads ORDER BY updated_at") as cur:
            return [DownloadRow(**dict(r)) for r in await cur.fetchall()]

    async def save(self, row: DownloadRow, parts: list[Part] | None = None) -> None:
        """Write the row (and, when given, its parts) in one transaction."""
        row.updated_at = time.time()
        values = asdict(row)
        await self._db.execute(_UPSERT_ROW, [values[c] for c in _ROW_COLUMNS])
        if parts is not None:
            await self._db.execute("DELETE FROM parts WHERE variant = ?", (row.variant,))
            await self._db.executemany(
                "INSERT INTO parts (variant, start, end, done) VALUES (?, ?, ?, ?)",
                [(row.variant, p.start, p.end, p.done) for p in parts],
            )
        await self._db.commit()

    async def parts(self, variant: str) -> list[Part]:
        async with self._db.execute(
            "SELECT start, end, done FROM parts WHERE variant = ? ORDER BY start", (variant,)
        ) as cur:
            return [Part(r["start"], r["end"], r["done"]) for r in await cur.fetchall()]

    async def get_meta(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            await self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            await self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )
        await self._db.commit()
