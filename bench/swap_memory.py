"""Memory across hot-swaps: does RSS return to about one model's worth after each swap?

Generates two llama GGUF models of a few hundred MB (random F32 weights), loads one in the
real ModelHost, answers a chat request (so every weight page is touched), then swaps back and
forth, sampling the process RSS after each swap has finished and the old model is freed.

    .venv/bin/python bench/swap_memory.py [--swaps 6] [--out bench/results/swap_memory.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from procstat import status_kib

from lawchatd.modelhost import Conversation, ModelHost
from lawchatd.modelhost.chat_types import Sampling
from lawchatd.testing.ggufgen import Shape, make_tiny_llama

# About 260 MB of F32 weights: big enough that a leaked model would show plainly in RSS.
BENCH_SHAPE = Shape(n_embd=1024, n_head=16, n_ff=4096, n_layer=4)
PROMPT = Conversation.parse([{"role": "user", "content": "Summarise the doctrine of precedent."}])


def rss_mb() -> float:
    """This process's RSS in MiB."""
    return status_kib("self", "VmRSS") / 1024


async def measure(swaps: int, folder: Path) -> dict:
    models = [
        make_tiny_llama(folder / f"m{seed}.gguf", seed=seed, shape=BENCH_SHAPE) for seed in (1, 2)
    ]
    model_mb = models[0].stat().st_size / 1e6
    host = ModelHost(n_ctx=256, n_threads=2)
    baseline = rss_mb()
    samples = []
    for swap in range(swaps + 1):
        path = models[swap % 2]
        started = time.monotonic()
        await host.load(path.stem, path)
        load_s = time.monotonic() - started
        await host.chat(PROMPT, Sampling(max_tokens=4))
        await asyncio.sleep(0.2)  # the old model is closed in a thread after its last request
        samples.append({"swap": swap, "model": path.stem, "rss_mb": round(rss_mb(), 1),
                        "load_s": round(load_s, 3)})  # fmt: skip
    await host.close()
    after_close = rss_mb()
    one_model = samples[0]["rss_mb"] - baseline
    worst = max(s["rss_mb"] for s in samples[1:]) - baseline
    return {
        "model_file_mb": round(model_mb, 1),
        "baseline_rss_mb": round(baseline, 1),
        "samples": samples,
        "after_close_rss_mb": round(after_close, 1),
        "one_model_mb": round(one_model, 1),
        "worst_after_swap_mb": round(worst, 1),
        "ratio_worst_to_one_model": round(worst / one_model, 3),
        "target": "worst RSS after a swap <= 1.2 x one model's RSS",
        "pass": worst <= 1.2 * one_model,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench/results/swap_memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(measure(args.swaps, Path(folder)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"model file {result['model_file_mb']} MB, RSS before any load {result['baseline_rss_mb']} MB"
    )
    for sample in result["samples"]:
        print(f"  swap {sample['swap']}: {sample['model']} loaded in {sample['load_s']} s, "
              f"RSS {sample['rss_mb']} MB")  # fmt: skip
    print(f"one model: +{result['one_model_mb']} MB; worst after a swap: "
          f"+{result['worst_after_swap_mb']} MB ({result['ratio_worst_to_one_model']}x); "
          f"after close: {result['after_close_rss_mb']} MB; "
          f"{'PASS' if result['pass'] else 'FAIL'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
