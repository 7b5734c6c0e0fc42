"""`lawchatd audit --verify` on a large trail, and the cost of auditing a chat request.

    .venv/bin/python bench/audit_verify.py --rows 100000

Writes ROWS chained audit rows (the daemon's own hashing, bulk-inserted for speed) into a
fresh database, then times the real command `python -m lawchatd audit --verify` on it, and
an export of the whole trail as JSON Lines. Then breaks one row in the middle and checks the
command exits 1 naming it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lawchatd.state.audit import COLUMNS, GENESIS, now_iso, row_hash
from lawchatd.state.store import Store
from lawchatd.testing.daemon import clean_env


def fill(db_path: Path, rows: int) -> None:
    asyncio.run(_migrate(db_path))
    prev = GENESIS
    batch = []
    start = time.time() - rows
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        for n in range(1, rows + 1):
            row = {
                "id": n,
                "time": now_iso(start + n),
                "actor": f"person-{n % 40}",
                "role": "user",
                "action": "chat",
                "target": "/v1/chat/completions",
                "outcome": "ok",
                "detail": json.dumps(
                    {
                        "model": "law-chat-q4_0",
                        "prompt_tokens": 412,
                        "completion_tokens": 180,
                        "status": 200,
                        "seconds": 3.2,
                    },
                    sort_keys=True,
                ),
                "prev": prev,
            }
            row["hash"] = prev = row_hash(row)
            batch.append([row[c] for c in COLUMNS])
        db.executemany(f"INSERT INTO audit VALUES ({', '.join('?' * len(COLUMNS))})", batch)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('audit_head', ?)", (f"{rows}:{prev}",))
        db.commit()


async def _migrate(db_path: Path) -> None:
    await (await Store.open(db_path)).close()


def timed(data: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = clean_env(LAWCHATD_DATA_DIR=str(data), LAWCHATD_ENV_FILE="/nonexistent")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lawchatd", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return time.monotonic() - started, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        fill(data / "lawchatd.sqlite3", args.rows)
        verify_s, done = timed(data, "--verify")
        assert done.returncode == 0, done.stdout + done.stderr
        export_s, exported = timed(data)
        assert exported.stdout.count("\n") == args.rows
        middle = args.rows // 2
        with contextlib.closing(sqlite3.connect(data / "lawchatd.sqlite3")) as db:
            db.execute("UPDATE audit SET actor = 'x' WHERE id = ?", (middle,))
            db.commit()
        broken_s, broken = timed(data, "--verify")
        assert broken.returncode == 1 and f"row {middle}" in broken.stdout, broken.stdout
    print(
        json.dumps(
            {
                "load_average_1min": round(os.getloadavg()[0], 1),
                "cpus": os.cpu_count(),
                "rows": args.rows,
                "verify_s": round(verify_s, 2),
                "verify_says": done.stdout.strip(),
                "export_s": round(export_s, 2),
                "verify_broken_s": round(broken_s, 2),
                "broken_says": broken.stdout.strip(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
