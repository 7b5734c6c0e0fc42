"""`lawchatd keys add|list|revoke` and `lawchatd audit [--since] [--verify]`, on the daemon's
database directly (WAL and a busy timeout: they work while the daemon runs; a revoked key is
refused by a running daemon within a second). Key changes made here are audited too, with
the actor `cli:<unix user>`."""

from __future__ import annotations

import argparse
import getpass
import json
import time
from typing import TextIO

from lawchatd.config import Settings
from lawchatd.errors import LawchatdError
from lawchatd.state.audit import AuditTrail, AuditWriteFailed
from lawchatd.state.keys import KeyStore, parse_expiry
from lawchatd.state.store import Store


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def _open(settings: Settings) -> tuple[KeyStore, AuditTrail]:
    store = await Store.open(settings.db_path)  # creates or migrates the tables
    await store.close()
    return await KeyStore.open(settings.db_path), await AuditTrail.open(settings.db_path)


async def keys_command(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    keys, trail = await _open(settings)
    try:
        if args.keys_command == "add":
            expires = parse_expiry(args.expires)
            key, stored = await keys.add(
                args.name, args.role, expires, args.max_concurrent, args.tokens_per_minute
            )
            try:
                await trail.append(
                    _actor(), "key.add", stored.name, "ok", None, key_role=stored.role
                )
            except AuditWriteFailed:
                await keys.revoke(stored.name)  # a key nobody can account for is not handed out
                raise
            out.write(key + "\n")  # the key alone on its line: scripts read it from here
        elif args.keys_command == "revoke":
            stored = await keys.revoke(args.name)
            await trail.append(_actor(), "key.revoke", stored.name, "ok")
            out.write(f"revoked the key of {stored.name}\n")
        else:
            _print_table([k.public() for k in await keys.all()], out)
    except LawchatdError as exc:
        raise SystemExit(f"lawchatd keys: {exc.message}") from None
    finally:
        await keys.close()
        await trail.close()
    return 0


def _print_table(rows: list[dict], out: TextIO) -> None:
    columns = ("name", "role", "state", "created", "last_used", "expires")
    cells = [[str(r[c] or "-") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


async def audit_command(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    _, trail = await _open(settings)
    try:
        if args.verify:
            started = time.monotonic()
            count, broken = await trail.verify()
            seconds = time.monotonic() - started
            if broken is not None:
                out.write(f"audit trail BROKEN at {broken} ({count} rows read)\n")
                return 1
            out.write(f"audit trail whole: {count} rows checked in {seconds:.2f} s\n")
            return 0
        async for row in trail.rows(args.since):
            row["detail"] = json.loads(row["detail"])
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    finally:
        await trail.close()
