"""Issue 8's long runs against the independent FlakyHub (tests/flaky_hub.py), loopback only.

storm: downloads under a seeded fault storm until at least N faults struck, with 1 and with
       4 connections; counts wrong final files and the bytes fetched again.
crash: at least N `kill -9` of the daemon at random moments (early, middle, verifying or
       renaming, during a cancel), throttled and at loopback speed; prints what each kill
       cost: the bytes fetched again, in MB, as % of the file and in seconds of transfer.

PYTHONPATH=. .venv/bin/python bench/engine_storms.py storm [--faults 1000] [--size-mb 40]
PYTHONPATH=. .venv/bin/python bench/engine_storms.py crash [--kills 50] [--size-mb 256]
add --code DIR to run another checkout's daemon (e.g. main, for a before/after)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lawchatd.testing.daemon import Daemon, bytes_received, daemon_env
from lawchatd.testing.flaky_hub import STORM, Faults, FlakyHub, start_flaky_hub
from lawchatd.testing.models import ModelFile, make_big_gguf, sha256_of, write_catalog

VARIANT = "bench"


class Bench:
    def __init__(self, root: Path, size: int, code: str | None) -> None:
        self.root = root
        path = make_big_gguf(root / "bench.gguf", size)
        self.data = path.read_bytes()
        self.model = ModelFile(VARIANT, "bench.gguf", size, sha256_of(path))
        self.catalog = write_catalog(root / "catalog.toml", {VARIANT: self.model})
        self.code = code
        self.lives = 0

    async def hub(self, faults: Faults) -> FlakyHub:
        return await start_flaky_hub({self.model.filename: self.data}, faults)

    def daemon(self, hub: FlakyHub, data_dir: Path, **env: str) -> Daemon:
        env = daemon_env(data_dir, hub.url, self.catalog, **env)
        if self.code:
            env["PYTHONPATH"] = self.code
        self.lives += 1
        return Daemon(data_dir, env, self.root / f"daemon-{self.lives}.log")

    def final(self, data_dir: Path) -> Path:
        return data_dir / "models" / self.model.filename

    def wrong_final(self, data_dir: Path) -> bool:
        final = self.final(data_dir)
        return final.exists() and sha256_of(final) != self.model.sha256


async def ask(daemon: Daemon, force: bool = False) -> None:
    body = {"model_variant": VARIANT, "force": force}
    status, reply = await daemon.post("/models/download", body)
    assert status == 200, reply


# ---- the fault storm -----------------------------------------------------------------------


async def storm(bench: Bench, connections: int, target: int, seed: int) -> dict:
    faults = Faults(seed=seed, storm=STORM, cap=512 << 10)
    hub = await bench.hub(faults)
    data_dir = bench.root / f"storm-{connections}"
    daemon = await bench.daemon(
        hub, data_dir, LAWCHATD_CONNECTIONS=str(connections), LAWCHATD_MAX_RETRIES="8"
    ).start()
    runs, wrong, errors, started = 0, 0, [], time.monotonic()
    try:
        while sum(faults.injected.values()) < target:
            await ask(daemon, force=runs > 0)
            done = await daemon.wait_done(timeout=600)
            runs += 1
            wrong += bench.wrong_final(data_dir)
            if done["status"] != "completed":
                errors.append(done["error"][:90])
        received = await bytes_received(daemon)
    finally:
        await daemon.close()
        await hub.close()
    size = bench.model.size
    needed = size * runs  # a run that failed on a corrupt byte fetched a whole file too
    refetched = hub.bytes_served - needed
    unkept = received - needed
    return {
        "connections": connections,
        "faults": sum(faults.injected.values()),
        "by_kind": dict(sorted(faults.injected.items())),
        "runs": runs,
        "failed_runs": errors,
        "wrong_final_files": wrong,
        "refetched_mb": round(refetched / 1e6, 2),
        "refetched_pct_of_transfer": round(100 * refetched / (size * runs), 2),
        "refetched_kb_per_fault": round(refetched / 1e3 / sum(faults.injected.values()), 1),
        # What the daemon received and did not keep (the rest never reached it: bytes a
        # dropped connection's kernel buffers discarded, or answers it refused unread).
        "received_not_kept_mb": round(unkept / 1e6, 2),
        "received_not_kept_kb_per_fault": round(unkept / 1e3 / sum(faults.injected.values()), 1),
        "seconds": round(time.monotonic() - started, 1),
    }


# ---- the crash storm -----------------------------------------------------------------------


def persisted(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "lawchatd.sqlite3") as db:
        return db.execute("SELECT COALESCE(SUM(done), 0) FROM parts").fetchone()[0]


async def reach(daemon: Daemon, moment: str, size: int, rng: random.Random) -> dict:
    """Wait for the chosen moment; return the last progress seen."""
    if moment == "early":
        progress = await daemon.wait_progress(lambda p: p["status"] == "downloading", 60)
        await asyncio.sleep(rng.uniform(0, 0.3))
        return progress
    if moment in ("verifying", "renaming"):
        progress = await daemon.wait_progress(
            lambda p: p["phase"] in ("verifying", "loading") or p["status"] != "downloading", 600
        )
        if moment == "renaming":
            await asyncio.sleep(rng.uniform(0, 0.05))
        return progress
    goal = rng.uniform(0.1, 0.95) * size
    progress = await daemon.wait_progress(
        lambda p: p["downloaded_size"] >= goal or p["status"] != "downloading", 600
    )
    if moment == "cancel":
        cancel = asyncio.ensure_future(daemon.post("/models/cancel-download"))
        cancel.add_done_callback(lambda t: t.cancelled() or t.exception())  # killed mid-reply
        await asyncio.sleep(rng.uniform(0, 0.03))
    return progress


async def crash(bench: Bench, rate: int | None, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    hub = await bench.hub(Faults(rate=rate))
    hub.trace = True
    data_dir = bench.root / f"crash-{rate or 'loopback'}"
    size = bench.model.size
    rows, wrong = [], 0
    try:
        while len(rows) < kills:
            before_bytes = hub.bytes_served
            before_kept = persisted_or_zero(data_dir, bench.model.filename)
            daemon = bench.daemon(hub, data_dir)
            try:
                await daemon.start()
                progress = await daemon.get("/models/download-progress")
                if progress["status"] != "downloading":
                    await ask(daemon, force=bench.final(data_dir).exists())
                moment = rng.choice(
                    ["early", "middle", "middle", "verifying", "renaming", "cancel"]
                )
                last = await reach(daemon, moment, size, rng)
                daemon.kill(signal.SIGKILL)
                killed_at = time.monotonic()
            finally:
                await daemon.close()
            sent = hub.bytes_served - before_bytes
            part = data_dir / "models" / f"{bench.model.filename}.part"
            completed = bench.final(data_dir).exists() and not part.exists()
            gained = size - before_kept if completed else persisted(data_dir) - before_kept
            wrong += bench.wrong_final(data_dir)
            refetch = max(0, sent - gained)
            behind = seconds_behind(hub, before_bytes + gained, killed_at) if refetch else 0.0
            rows.append(
                {
                    "moment": moment,
                    "completed": completed,
                    "sent": sent,
                    "kept_before": before_kept,
                    "gained": gained,
                    "refetch_mb": round(refetch / 1e6, 3),
                    "refetch_pct": round(100 * refetch / size, 3),
                    "refetch_s": round(behind, 3),
                    "speed_mb_s": round((last.get("speed") or 0) / 1e6, 1),
                }  # fmt: skip
            )
            await asyncio.sleep(0.3)  # let the hub notice the dead connections
    finally:
        await hub.close()
    return summarize(rows, wrong, rate)


def seconds_behind(hub: FlakyHub, recorded: int, killed_at: float) -> float:
    """How old the record was at the kill: the time since the hub had sent the bytes it holds
    (one connection sends in order; an upper bound, as sent bytes still travel)."""
    for when, served in hub.timeline:
        if served > recorded:
            return killed_at - when
    return 0.0


def persisted_or_zero(data_dir: Path, filename: str) -> int:
    """What the next run resumes from: nothing without a partial file (after a completion)."""
    if not (data_dir / "models" / f"{filename}.part").exists():
        return 0
    return persisted(data_dir)


def summarize(rows: list[dict], wrong: int, rate: int | None) -> dict:
    mbs = [r["refetch_mb"] for r in rows]
    secs = [r["refetch_s"] for r in rows if r["refetch_mb"] > 0]
    return {
        "speed": f"{rate / 1e6:g} MB/s" if rate else "loopback (unthrottled)",
        "kills": len(rows),
        "by_moment": {m: sum(r["moment"] == m for r in rows) for m in sorted({r["moment"] for r in rows})},
        "wrong_final_files": wrong,
        "refetch_mb_max": max(mbs),
        "refetch_mb_mean": round(statistics.mean(mbs), 3),
        "refetch_pct_max": max(r["refetch_pct"] for r in rows),
        "refetch_s_max": max(secs) if secs else None,
        "refetch_s_mean": round(statistics.mean(secs), 3) if secs else None,
        "each_kill": rows,
    }  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["storm", "crash"])
    parser.add_argument("--faults", type=int, default=1000, help="storm: faults per setting")
    parser.add_argument("--kills", type=int, default=50, help="crash: kills per speed")
    parser.add_argument("--size-mb", type=int, default=None)
    parser.add_argument("--rate-mb", type=float, default=20, help="crash: the throttled speed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--code", help="a checkout whose lawchatd the daemon runs")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the folder with the logs")
    args = parser.parse_args()
    size = (args.size_mb or (40 if args.what == "storm" else 256)) << 20
    if args.code:
        os.chdir(args.code)  # `python -m lawchatd` imports from the working folder first
    tmp = Path(tempfile.mkdtemp(prefix="lawchatd-storm-"))
    try:
        bench = Bench(tmp, size, args.code)
        if args.what == "storm":
            results = [await storm(bench, c, args.faults, args.seed + c) for c in (1, 4)]
        else:
            throttled = int(args.rate_mb * 1e6)
            results = [await crash(bench, r, args.kills, args.seed) for r in (throttled, None)]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k != "each_kill"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
