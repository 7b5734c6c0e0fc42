"""lawchatd over a link that looks like the internet, side by side with curl, aria2c and huggingface_hub.

The mirror (`lawchatd mirror`) sits behind bench/shaper.py: 40 MB/s per connection like a CDN,
125 MB/s in all like a 1 Gbit/s office line, and in the `crawl` variant one ranged connection
at 1 MB/s. Each download gets a fresh shaper, so every tool meets the same link.

    .venv/bin/python bench/internet.py [--size-mb 400] [--repeats 2] [--connections 4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import run as base  # bench/run.py: file, mirror, processes, daemon helpers
from capcheck import measure_limiter, raw_fetch, window_report

from lawchatd.testing.daemon import clean_env
from lawchatd.testing.ports import free_port

HERE = Path(__file__).resolve().parent
LINE, PER_CONNECTION, CRAWL = 125e6, 40e6, 1e6
HF_SCRIPT = """
import json, sys, time
from huggingface_hub import hf_hub_download
from huggingface_hub.file_download import http_get
start = time.perf_counter()
try:
    hf_hub_download(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3])
    how = "hf_hub_download"
except Exception as exc:  # a mirror without the Hub's metadata headers: time the transfer alone
    how = f"http_get ({type(exc).__name__})"
    start = time.perf_counter()
    with open(sys.argv[3] + "/file", "wb") as f:
        http_get(sys.argv[4], f)
print(json.dumps({"seconds": time.perf_counter() - start, "how": how}))
"""


def start_shaper(ctx: base.Context, mirror_url: str, crawl: bool) -> tuple:
    port = free_port()
    cmd = [base.PYTHON, str(HERE / "shaper.py"), "--port", str(port)]
    cmd += [
        "--upstream",
        mirror_url.removeprefix("http://"),
        "--per-connection",
        str(PER_CONNECTION),
    ]
    cmd += ["--total", str(LINE), "--crawl", str(CRAWL if crawl else 0)]
    proc = base.spawn(cmd, ctx.tmp / "shaper.log", env=clean_env())
    base.listening(proc, port, ctx.tmp / "shaper.log")
    return proc, base.Context(ctx.tmp, ctx.source, ctx.mirror, f"http://127.0.0.1:{port}")


def timed(cmd: list[str], log: Path) -> float:
    return base.run_tool(cmd, log).wall


def run_curl(ctx: base.Context) -> float:
    out = ctx.fresh_dir("curl")
    return timed(["curl", "-sSfL", "-o", str(out / "f"), ctx.resolve_url], out / "log")


def run_aria2c(ctx: base.Context, n: int = 8) -> float:
    out = ctx.fresh_dir("aria2c")
    cmd = ["aria2c", "-x", str(n), "-s", str(n), *base.ARIA2C_FLAGS, "-d", str(out), "-o", "f"]
    return timed([*cmd, ctx.resolve_url], out / "log")


def run_hf(ctx: base.Context) -> tuple[float, str]:
    out = ctx.fresh_dir("hf")
    env = clean_env(HF_ENDPOINT=ctx.mirror_url, HF_HUB_DISABLE_TELEMETRY="1")
    env["HF_HOME"] = str(out / "home")
    cdn = ctx.resolve_url  # http_get follows the redirect itself
    cmd = [base.PYTHON, "-c", HF_SCRIPT, f"{base.ORG}/{base.REPO}", base.FILENAME, str(out), cdn]
    proc = base.spawn(cmd, out / "log", env=env)
    if proc.wait() != 0:
        raise base.BenchError(f"huggingface_hub failed: {base.tail(out / 'log')}")
    result = json.loads(base.tail(out / "log").strip().splitlines()[-1])
    return result["seconds"], result["how"]


async def run_lawchatd(ctx: base.Context, n: int, timeout: float, **env: str) -> dict:
    """POST to `completed`, with the bytes seen in each progress message for the 5 s windows."""
    daemon = await base.start_daemon(ctx, f"lawchatd-{n}", n, **env)
    try:
        async with aiohttp.ClientSession(headers=daemon.headers()) as session:
            ws = await session.ws_connect(f"{daemon.url}/ws/progress")
            await ws.receive_json()
            start = time.perf_counter()
            body = {"model_variant": base.VARIANT}
            async with session.post(f"{daemon.url}/models/download", json=body) as resp:
                resp.raise_for_status()
            samples, status = await _follow(ws, timeout)
            wall = time.perf_counter() - start
    finally:
        await daemon.close()
        shutil.rmtree(daemon.data_dir.parent, ignore_errors=True)
    return {"wall": wall if status == "completed" else None, "status": status, "samples": samples}


async def _follow(ws, timeout: float) -> tuple[list[tuple[float, int]], str]:
    samples: list[tuple[float, int]] = []
    try:
        async with asyncio.timeout(timeout):
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("type") != "progress":
                    continue
                samples.append((time.monotonic(), data.get("downloaded_size") or 0))
                if data["status"] in base.ENDED:
                    return samples, data["status"]
    except TimeoutError:
        return samples, f"not done after {timeout:.0f} s"
    return samples, "websocket closed"


def measure(ctx: base.Context, args: argparse.Namespace) -> dict[str, list]:
    """Every tool once per round, each on a fresh shaper, so drifts of a shared machine hit all."""
    results: dict[str, list] = {}
    size, cap = ctx.source.size, args.cap_mb * 1e6
    first = args.connections[0]

    def record(name: str, value) -> None:
        results.setdefault(name, []).append(value)
        shown = f"{size / value / 1e6:8.1f} MB/s in {value:6.2f} s" if value else "did not finish"
        print(f"  {name:<28} {shown}", flush=True)

    def shaped(crawl: bool, job, *job_args, **job_kwargs):
        proc, shaped_ctx = start_shaper(ctx, ctx.mirror_url, crawl)
        try:
            result = job(shaped_ctx, *job_args, **job_kwargs)
            return asyncio.run(result) if asyncio.iscoroutine(result) else result
        finally:
            base.stop(proc)
            os.sync()

    def raw(c: base.Context, n: int):
        return raw_fetch(c.resolve_url, size, n)

    def limiter(c: base.Context):
        return measure_limiter(c.resolve_url, size, int(cap), 4, args.limiter_seconds)

    for rep in range(args.repeats):
        print(f"round {rep + 1}", flush=True)
        record("raw 8 connections", shaped(False, raw, 8))
        record("curl", shaped(False, run_curl))
        record("aria2c(8)", shaped(False, run_aria2c))
        record("aria2c(8) crawl", shaped(True, run_aria2c))
        seconds, results["hf_how"] = shaped(False, run_hf)
        record("huggingface_hub", seconds)
        for n in args.connections:
            for crawl in (False, True):
                got = shaped(crawl, run_lawchatd, n, 4 * size / LINE + 20)
                record(f"lawchatd({n})" + (" crawl" if crawl else ""), got["wall"])
        got = shaped(
            False, run_lawchatd, first, size / cap * 1.5 + 30, LAWCHATD_MAX_RATE=str(int(cap))
        )
        results.setdefault("lawchatd cap windows", []).append(window_report(got["samples"], cap))
        record(f"lawchatd({first}) MAX_RATE={args.cap_mb}MB", got["wall"])
        for crawl in (False, True):
            report = shaped(crawl, limiter)
            results.setdefault(f"limiter {'crawl' if crawl else 'line'}", []).append(report)
            print(f"  limiter(4) {'crawl' if crawl else 'line '}: {report}", flush=True)
    return results


def summarize(results: dict[str, list], args: argparse.Namespace, size: int) -> dict:
    med = {
        k: statistics.median(v)
        for k, v in results.items()
        if v and all(isinstance(x, float) for x in v)
    }
    rate = {k: size / v / 1e6 for k, v in med.items()}
    n = args.connections[0]
    best = max((f"lawchatd({c})" for c in args.connections), key=lambda k: rate.get(k, 0))
    ratios = {
        f"{best} / line rate": rate.get(best, 0) / (LINE / 1e6),
        "raw 8 connections / line rate": rate["raw 8 connections"] / (LINE / 1e6),
        f"{best} / raw 8 connections": rate.get(best, 0) / rate["raw 8 connections"],
        f"{best} / aria2c(8)": rate.get(best, 0) / rate["aria2c(8)"],
        f"{best} / huggingface_hub": rate.get(best, 0) / rate["huggingface_hub"],
        f"lawchatd({n}) time crawl / line": med.get(f"lawchatd({n}) crawl", float("inf"))
        / med.get(f"lawchatd({n})", float("nan")),
        "aria2c(8) time crawl / line": med["aria2c(8) crawl"] / med["aria2c(8)"],
        f"lawchatd({n}) with MAX_RATE / cap": rate.get(f"lawchatd({n}) MAX_RATE={args.cap_mb}MB", 0)
        / args.cap_mb,
    }
    return {"median_s": med, "mb_s": rate, "ratios": {k: round(v, 3) for k, v in ratios.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=400, help="test file in MiB")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--connections", default="4,8")
    parser.add_argument("--cap-mb", type=int, default=30, help="the cap for the capped runs, MB/s")
    parser.add_argument("--limiter-seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "internet.json")
    parser.add_argument("--tmp-dir")
    args = parser.parse_args()
    args.connections = [int(n) for n in args.connections.split(",")]
    with base.workspace(args.tmp_dir, keep=False) as tmp:
        size = args.size_mb * base.MIB
        source = base.make_source(tmp, size)
        base.warm_page_cache(source.path)
        ctx = base.start_mirror(tmp, source)
        results = measure(ctx, args)
    summary = summarize(results, args, size)
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "args": vars(args) | {"out": str(args.out)},
                "machine": base.machine(),
                "results": results,
                "summary": summary,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
