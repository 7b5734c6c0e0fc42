"""Is the database's schema the one its version promises, and rows read without trusting them.

A database whose version is right but whose tables were dropped or altered (by hand, by a
tool, by damage) used to start, and then every download failed with advice about free space
and permissions; a row with a hostile value (text where a size belongs) gave a 500. Start-up
now compares every table's columns with the ones the migrations build (a SchemaDamaged exits
65 in words), and the store reads each value as the type its field has, or a safe default.
"""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from typing import Any

from lawchatd.errors import LawchatdError
from lawchatd.fetch.status import Status


class SchemaDamaged(LawchatdError, sqlite3.DatabaseError):
    """Tables or columns are missing: start-up turns it into exit 65 (a damaged database),
    as it does any sqlite3.DatabaseError."""


def expected_tables(migrations: tuple[str, ...]) -> dict[str, set[str]]:
    """table -> columns, as the migrations build them (in a throwaway in-memory database)."""
    with sqlite3.connect(":memory:") as db:
        for migration in migrations:
            db.executescript(migration)
        return _tables(db.execute)


def _tables(execute: Any) -> dict[str, set[str]]:
    names = [r[0] for r in execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: {c[1] for c in execute(f'PRAGMA table_info("{n}")')} for n in names}


def problems(expected: dict[str, set[str]], found: dict[str, set[str]]) -> list[str]:
    """What is missing, in words (empty: the schema is whole)."""
    said = []
    for table, columns in expected.items():
        if table not in found:
            said.append(f"the table {table!r} is missing")
        elif missing := sorted(columns - found[table]):
            said.append(f"the table {table!r} lacks {', '.join(missing)}")
    return said


def damaged(said: list[str]) -> SchemaDamaged:
    return SchemaDamaged(
        f"its schema is damaged: {'; '.join(said)} (restore a backup, or move the file away "
        "to start with an empty one: the model files are kept)"
    )


# ---- rows read defensively ------------------------------------------------------------------

KNOWN_STATUSES = frozenset(s.value for s in Status)


def as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return max(0, int(value))
    except (ValueError, OverflowError):
        return 0


def as_float(value: object) -> float | None:
    try:
        return float(value) if isinstance(value, int | float) else None
    except OverflowError:
        return None


def as_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def clean_row(row_class: type, values: dict[str, Any]) -> Any:
    """A `row_class` (a dataclass) from `values`, each read as its field's type."""
    clean: dict[str, Any] = {}
    for field in fields(row_class):
        value = values.get(field.name)
        kind = str(field.type)
        if kind == "int":
            clean[field.name] = as_int(value)
        elif kind == "float | None":
            clean[field.name] = as_float(value)
        elif kind == "str":
            clean[field.name] = value if isinstance(value, str) else str(value or "")
        else:
            clean[field.name] = as_text(value)
    if "status" in clean and clean["status"] not in KNOWN_STATUSES:
        clean["status"], clean["error"] = Status.ERROR.value, "its record was unreadable"
    return row_class(**clean)
