"""RSS of `lawchatd mirror` across many requests: a long-running office server must stay flat.

Usage: python bench/mirror_memory.py [ROUNDS] [REQUESTS_PER_ROUND]   (default 4 x 10000)
Each request pair is a GET of a small file and a HEAD of an LFS file's resolve, 50 at a time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from procstat import status_kib

from lawchatd.testing.ports import free_port, wait_for_port


async def _hammer(base: str, pairs: int) -> None:
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            async with http.get(f"{base}/org/repo/resolve/main/README.md") as resp:
                await resp.read()
            url = f"{base}/org/repo/resolve/main/m.gguf"
            async with http.head(url, allow_redirects=False) as resp:
                await resp.read()

        for _ in range(0, pairs, 50):
            await asyncio.gather(*(one() for _ in range(50)))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    per_round = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp, "org", "repo")
        repo.mkdir(parents=True)
        (repo / "README.md").write_text("# bench\n")
        (repo / "m.gguf").write_bytes(b"GGUF" + os.urandom(1 << 20))
        port = free_port()
        argv = [sys.executable, "-m", "lawchatd", "mirror", tmp, "--port", str(port)]
        proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(proc, port)
            print(f"start: RSS {status_kib(proc.pid)} kB")
            for done in range(1, rounds + 1):
                asyncio.run(_hammer(f"http://127.0.0.1:{port}", per_round // 2))
                print(f"after {done * per_round} requests: RSS {status_kib(proc.pid)} kB")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
