"""Serving at real size, side by side: lawchatd against llama-cpp-python and its server.

On a GGUF of law-chat's shape (7B, Q4_0, 3.79 GB, random weights), n_ctx 4096:
1. one user: time to first token and decode tokens/s of llama-cpp-python called directly,
   lawchatd (HTTP, streaming) and `python -m llama_cpp.server`, in interleaved rounds;
2. four users at once: lawchatd with LAWCHATD_PARALLEL=4 against 1 (one slot);
3. a hot swap between two such models under chat traffic, in a memory cgroup (v1 or v2, when
   one can be made; else LAWCHATD_MEMORY_MAX) that cannot hold both, then with room for both;
4. (`--only q8swap`) a firm's 16 GB server: swaps Q4_0 -> Q8_0 (7.16 GB file) -> Q4_0 under
   chat traffic with the daemon in a 16 GB cgroup.

    .venv/bin/python bench/serve.py [--layers 32] [--tokens 24] [--rounds 2] [--out FILE]

Every peer runs in its own process, one at a time; RSS is the process's VmRSS / VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from procstat import status_kib
from serve_peers import Direct, LlamaServer, ServedModel

from lawchatd.testing.lawchat_gguf import LawChatShape, make_lawchat_gguf

QUESTION = "Is an oral agreement to sell land enforceable, and what must the buyer prove?"
_asked = iter(range(1, 1 << 30))


def messages() -> list[dict[str, str]]:
    """A new question each time (its first word differs): every peer feeds the whole
    prompt, none answers from a cached prefix, so time to first token is the cold one."""
    return [{"role": "user", "content": f"Case {next(_asked)}. {QUESTION}"}]


async def stream_once(url: str, headers: dict[str, str], tokens: int) -> dict[str, float]:
    """One streamed chat: time to first content, decode tokens/s after it, failure flag."""
    body = {"messages": messages(), "max_tokens": tokens, "stream": True, "temperature": 0.8}
    started = time.monotonic()
    first = last = None
    count = 0
    timeout = aiohttp.ClientTimeout(total=1800)
    async with (
        aiohttp.ClientSession(timeout=timeout) as s,
        s.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        if resp.status != 200:
            return {"failed": 1, "status": resp.status}
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return {"failed": 1, "error": str(event["error"])}
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                last = time.monotonic()
                first = first or last
                count += 1
    if first is None or last is None:
        return {"failed": 1}
    decode = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return {"failed": 0, "ttft": first - started, "tok_s": decode, "tokens": count}


async def ask(peer: Any, tokens: int) -> dict:
    if isinstance(peer, Direct):
        return await peer.ask(messages(), tokens)
    return await stream_once(peer.url, peer.headers, tokens)


async def side_by_side(a: Any, b: Any, tokens: int, n: int) -> tuple[list[dict], list[dict]]:
    """Both loaded at once, one request to each in turn (order swapped every round), so a
    busy neighbour on the machine slows both alike."""
    runs: dict[int, list[dict]] = {id(a): [], id(b): []}
    async with a, b:
        await ask(a, 4), await ask(b, 4)  # warm-up
        for i in range(n):
            for peer in (a, b) if i % 2 == 0 else (b, a):
                runs[id(peer)].append(await ask(peer, tokens))
    return runs[id(a)], runs[id(b)]


def summary(runs: list[dict]) -> dict[str, float]:
    ok = [r for r in runs if not r["failed"]]
    return {
        "ttft_s": statistics.median(r["ttft"] for r in ok) if ok else float("nan"),
        "tok_s": statistics.median(r["tok_s"] for r in ok) if ok else float("nan"),
        "failed": sum(r["failed"] for r in runs),
        "n": len(runs),
    }


async def single_user(model: Path, args: argparse.Namespace, work: Path) -> dict:
    n = args.rounds * args.repeats
    res: dict[str, Any] = {}
    peers = {
        "direct": lambda: Direct(model, args.threads),
        "llama_cpp.server": lambda: LlamaServer(model, args.threads),
    }
    for name, make in peers.items():
        law, other = await side_by_side(
            ServedModel(work, {"a": model}, threads=args.threads, parallel=args.parallel),
            make(),
            args.tokens,
            n,
        )
        law_s, other_s = summary(law), summary(other)
        res[f"vs_{name}"] = {
            "lawchatd": law_s,
            name: other_s,
            "tok_s_ratio": law_s["tok_s"] / other_s["tok_s"],
            "ttft_ratio_lower_is_better": law_s["ttft_s"] / other_s["ttft_s"],
        }
    return res


async def four_users(daemon: ServedModel, tokens: int) -> dict:
    started = time.monotonic()
    runs = await asyncio.gather(
        *(stream_once(daemon.url, daemon.headers, tokens) for _ in range(4))
    )
    wall = time.monotonic() - started
    return {"runs": runs, "agg_tok_s": sum(r.get("tokens", 0) for r in runs) / wall}


async def users_at_once(model: Path, args: argparse.Namespace, work: Path) -> dict:
    """Four users at once against LAWCHATD_PARALLEL=4 and =1, both daemons loaded, in turns."""
    slots = {p: ServedModel(work, {"a": model}, threads=args.threads, parallel=p) for p in (4, 1)}
    out: dict[str, Any] = {
        f"parallel_{p}": {"agg_tok_s": [], "ttft": [], "failed": 0} for p in slots
    }
    async with slots[4], slots[1]:
        for d in slots.values():
            await stream_once(d.url, d.headers, 2)
        prompt_tokens = await prompt_size(slots[1])
        for i in range(args.rounds):
            for p in (4, 1) if i % 2 == 0 else (1, 4):
                got = await four_users(slots[p], args.tokens)
                rec = out[f"parallel_{p}"]
                rec["agg_tok_s"].append(got["agg_tok_s"])
                rec["ttft"] += [r["ttft"] for r in got["runs"] if not r["failed"]]
                rec["failed"] += sum(r["failed"] for r in got["runs"])
    for p in slots:
        rec = out[f"parallel_{p}"]
        ttft = sorted(rec.pop("ttft"))
        rec["p95_ttft_s"] = (
            ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))] if ttft else None
        )
        rec["agg_tok_s"] = statistics.median(rec["agg_tok_s"])
    out["aggregate_ratio_4_vs_1"] = out["parallel_4"]["agg_tok_s"] / out["parallel_1"]["agg_tok_s"]
    # The same run's ceiling, on llama.cpp itself with the daemons gone (their memory back):
    # what a perfect server could show on this workload and on these cores.
    out["ceiling"] = await ceiling(model, prompt_tokens, args)
    if "workload_ceiling" in out["ceiling"]:
        share = out["aggregate_ratio_4_vs_1"] / out["ceiling"]["workload_ceiling"]
        out["share_of_ceiling"] = share
    return out


async def prompt_size(daemon: ServedModel) -> int:
    """Prompt tokens of one of the bench's questions, as the daemon's template makes them."""
    body = {"messages": messages(), "max_tokens": 1}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{daemon.url}/v1/chat/completions", json=body, headers=daemon.headers) as r,
    ):
        return (await r.json())["usage"]["prompt_tokens"]


async def ceiling(model: Path, prompt_tokens: int, args: argparse.Namespace) -> dict:
    """bench/batch_ceiling.py in a process of its own (6 GB, freed when it ends)."""
    cmd = [
        sys.executable, str(Path(__file__).with_name("batch_ceiling.py")), str(model),
        "--users", "4", "--prompt", str(prompt_tokens), "--tokens", str(args.tokens),
        "--threads", str(args.threads),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:  # the daemons' figures are kept; the ceiling says why it is not
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {"error": f"batch_ceiling.py exited {proc.returncode}", "stderr": tail}
    return json.loads(stdout)


async def traffic(
    daemon: ServedModel, stop: asyncio.Event, log: list[dict], answered: asyncio.Event
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        r = await stream_once(daemon.url, daemon.headers, 4)
        log.append({**r, "took": time.monotonic() - started})
        answered.set()


async def answers(log: list[dict], answered: asyncio.Event, n: int) -> None:
    while len(log) < n:
        answered.clear()
        await answered.wait()


async def swap_step(
    daemon: ServedModel, variant: str, log: list[dict], answered: asyncio.Event
) -> dict:
    """Load ``variant`` while the users keep asking; then wait for 8 more answers."""
    before = len(log)
    seen_none = False
    started = time.monotonic()
    swap_task = asyncio.create_task(daemon.load(variant))
    while not swap_task.done():
        status = await daemon.get("/models/loaded")
        seen_none |= status["model_variant"] is None
        await asyncio.sleep(0.05)
    loaded = await swap_task
    took = time.monotonic() - started
    await answers(log, answered, before + 8)
    return {
        "to": variant,
        "load_status": loaded.get("status", loaded),
        "swap_s": took,
        "requests_waited_for_model": seen_none,
        "rss_after": status_kib(daemon.pid, "VmRSS") * 1024,
        "peak_rss_so_far": status_kib(daemon.pid, "VmHWM") * 1024,
    }


async def swap(
    models: dict[str, Path],
    args: argparse.Namespace,
    work: Path,
    limit: int | None,
    steps: tuple[str, ...] = ("b",),
) -> dict:
    daemon = ServedModel(work, models, threads=args.threads, cgroup_limit=limit)
    async with daemon:
        one_model_rss = status_kib(daemon.pid, "VmRSS") * 1024
        stop, answered, log = asyncio.Event(), asyncio.Event(), []
        users = [asyncio.create_task(traffic(daemon, stop, log, answered)) for _ in range(4)]
        await answers(log, answered, 4)
        done = [await swap_step(daemon, variant, log, answered) for variant in steps]
        stop.set()
        await asyncio.gather(*users)
        peak = status_kib(daemon.pid, "VmHWM") * 1024
    return {
        "memory_limit": limit,
        "mode": daemon.limit_mode,
        "steps": done,
        "requests": len(log),
        "failed": sum(r["failed"] for r in log),
        "failures": [r for r in log if r["failed"]][:5],
        "requests_waited_for_model": any(d["requests_waited_for_model"] for d in done),
        "one_model_rss": one_model_rss,
        "peak_rss": peak,
        "peak_vs_one_model": peak / one_model_rss,
        "slowest_request_s": max(r["took"] for r in log),
    }


async def one_model_rss(model: Path, args: argparse.Namespace, work: Path) -> int:
    """RSS of a daemon with one model loaded and warm: the unit of the swap's limit."""
    async with ServedModel(work, {"a": model}, threads=args.threads) as daemon:
        await stream_once(daemon.url, daemon.headers, 4)
        return status_kib(daemon.pid, "VmRSS") * 1024


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--only", default="single,users,swap", help="also: q8swap")
    p.add_argument("--parallel", type=int, help="LAWCHATD_PARALLEL for the single-user daemon")
    p.add_argument(
        "--server-memory", type=int, default=16 * 10**9, help="q8swap's cgroup limit, bytes"
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/lawchatd-serve-bench"))
    p.add_argument("--out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the generated models")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    shape = LawChatShape(n_layer=args.layers)
    only = args.only.split(",")
    wanted = [("a", 1, "Q4_0")]
    wanted += [("b", 2, "Q4_0")] if "swap" in only else []
    wanted += [("q8", 3, "Q8_0")] if "q8swap" in only else []
    models = {}
    result: dict[str, Any] = {"layers": args.layers, "tokens": args.tokens, "threads": args.threads}
    try:
        for variant, seed, quant in wanted:
            path = args.work / f"law-chat-shaped-{args.layers}l-{variant}.gguf"
            models[variant] = path
            if not path.exists():
                make_lawchat_gguf(path, shape, seed=seed, quant=quant)
        if "single" in only:
            result["single_user"] = await single_user(models["a"], args, args.work)
            print(json.dumps(result["single_user"], indent=1), flush=True)
        if "users" in only:
            result["four_users"] = await users_at_once(models["a"], args, args.work)
            print(json.dumps(result["four_users"], indent=1), flush=True)
        if "swap" in only:
            one = await one_model_rss(models["a"], args, args.work)
            result["swap_tight"] = await swap(models, args, args.work, int(1.5 * one))
            print(json.dumps(result["swap_tight"], indent=1), flush=True)
            result["swap_room"] = await swap(models, args, args.work, None)
            print(json.dumps(result["swap_room"], indent=1), flush=True)
        if "q8swap" in only:
            pair = {"a": models["a"], "q8": models["q8"]}
            result["swap_q4_q8_16gb"] = await swap(
                pair, args, args.work, args.server_memory, steps=("q8", "a")
            )
            print(json.dumps(result["swap_q4_q8_16gb"], indent=1), flush=True)
    finally:
        if not args.keep:
            for path in models.values():
                path.unlink(missing_ok=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
