"""The chat API as the official `openai` SDK sees it: per-request overhead and tokens/s.

Starts `lawchatd serve` on loopback with a tiny model (tests/ggufgen.py, generates in
microseconds per token), so what is measured is the daemon's HTTP + OpenAI layer and the SDK,
not the model: round trips with max_tokens=1, then answers of 200 tokens, whole and streamed
(with usage). With a real law-chat model generation dominates (about 10 tokens/s on 2 cores).

    .venv/bin/python bench/openai_client.py [--requests 200] [--answers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

from lawchatd.testing.daemon import API_KEY, Daemon, daemon_env
from lawchatd.testing.models import REPO, build_models, write_catalog

ASK = [{"role": "user", "content": "What is a tort?"}]
VARIANT = "tiny-small"


def start(root: Path) -> Daemon:
    models = build_models(root / "hub")
    data = root / "data"
    (data / "models").mkdir(parents=True)
    shutil.copy(root / "hub" / REPO / models[VARIANT].filename, data / "models")
    catalog = write_catalog(root / "catalog.toml", models)
    daemon = Daemon(data, daemon_env(data, "http://127.0.0.1:9", catalog), root / "daemon.log")
    asyncio.run(daemon.start())
    reply = httpx.post(
        f"{daemon.url}/models/load", json={"model_variant": VARIANT}, headers=daemon.headers()
    )
    reply.raise_for_status()
    return daemon


def round_trips(client: OpenAI, n: int) -> list[float]:
    for _ in range(5):  # warm-up
        client.chat.completions.create(model=VARIANT, messages=ASK, max_tokens=1)
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        client.chat.completions.create(model=VARIANT, messages=ASK, max_tokens=1)
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)


def tokens_per_second(client: OpenAI, answers: int, stream: bool) -> float:
    started, tokens = time.perf_counter(), 0
    for _ in range(answers):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=VARIANT,
                    messages=ASK,
                    max_tokens=200,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            tokens += chunks[-1].usage.completion_tokens
        else:
            answer = client.chat.completions.create(model=VARIANT, messages=ASK, max_tokens=200)
            tokens += answer.usage.completion_tokens
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--answers", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lawchatd-bench-") as tmp:
        daemon = start(Path(tmp))
        try:
            client = OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0)
            rtt = round_trips(client, args.requests)
            p50, p90 = statistics.median(rtt), rtt[int(len(rtt) * 0.9)]
            print(f"max_tokens=1 round trip: p50 {p50 * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms")
            for stream in (False, True):
                rate = tokens_per_second(client, args.answers, stream)
                print(f"200-token answers, stream={stream}: {rate:.0f} tokens/s")
        finally:
            asyncio.run(daemon.close())


if __name__ == "__main__":
    main()
