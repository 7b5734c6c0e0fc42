"""The chat path's latency with the audit trail (this checkout) and without it (another
checkout from before it, e.g. main), side by side on the same tiny model.

    .venv/bin/python bench/audit_latency.py --without /path/to/checkout-without-audit

Both daemons run from their own checkout (`python -m lawchatd` in that folder) on a copy of
the same tiny llama model; rounds alternate between them (A B A B ...) so the machine's load
lands on both. Each request is a non-streamed chat of `--tokens` tokens. Prints one JSON
object with p50 and p99 per side and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lawchatd.testing.daemon import Daemon, daemon_env
from lawchatd.testing.models import REPO, build_models, write_catalog

VARIANT = "tiny-small"
HERE = Path(__file__).resolve().parent.parent


async def start(code: Path, root: Path, name: str, hub: Path, models: dict) -> Daemon:
    data = root / name
    (data / "models").mkdir(parents=True)
    shutil.copy(hub / REPO / models[VARIANT].filename, data / "models")
    catalog = write_catalog(data / "catalog.toml", models)
    env = daemon_env(data, "http://127.0.0.1:9", catalog)
    env.pop("PYTHONPATH", None)  # the checkout in cwd is the one imported
    daemon = Daemon(data, env, data / "daemon.log", cwd=code)
    await daemon.start()
    status, body = await daemon.post("/models/load", {"model_variant": VARIANT})
    assert status == 200, body
    return daemon


async def one_round(daemon: Daemon, n: int, tokens: int) -> list[float]:
    session = await daemon.session()
    body = {
        "model": VARIANT,
        "messages": [{"role": "user", "content": "What is a tort?"}],
        "max_tokens": tokens,
    }
    took = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.post(daemon.url + "/v1/chat/completions", json=body) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        took.append(time.perf_counter() - started)
    return took


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--without", type=Path, required=True, help="a checkout without audit")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hub = root / "hub"
        models = build_models(hub)
        sides = {
            "with_audit": await start(HERE, root, "with", hub, models),
            "without_audit": await start(args.without.resolve(), root, "without", hub, models),
        }
        try:
            times: dict[str, list[float]] = {name: [] for name in sides}
            for daemon in sides.values():  # warm-up, not counted
                await one_round(daemon, 10, args.tokens)
            for _ in range(args.rounds):
                for name, daemon in sides.items():
                    times[name] += await one_round(daemon, args.per_round, args.tokens)
        finally:
            for daemon in sides.values():
                await daemon.close()
    result: dict = {
        "load_average_1min": round(os.getloadavg()[0], 1),
        "requests_per_side": args.rounds * args.per_round,
        "tokens": args.tokens,
    }
    for name, values in times.items():
        result[name] = {
            "p50_ms": round(1000 * quantile(values, 0.50), 2),
            "p99_ms": round(1000 * quantile(values, 0.99), 2),
        }
    result["p99_ratio"] = round(
        result["with_audit"]["p99_ms"] / result["without_audit"]["p99_ms"], 3
    )
    result["p50_ratio"] = round(
        result["with_audit"]["p50_ms"] / result["without_audit"]["p50_ms"], 3
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
