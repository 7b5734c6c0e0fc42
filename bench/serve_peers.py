"""The processes bench/serve.py measures: lawchatd, `python -m llama_cpp.server`, and
llama-cpp-python called directly. Each runs in its own process, one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from lawchatd.testing.daemon import Daemon, serve_command, serve_env
from lawchatd.testing.ports import free_port

API_KEY = "bench-key-0123456789"
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup")


def make_cgroup(limit: int) -> tuple[Path | None, str]:
    """A memory cgroup with ``limit`` bytes (v2 memory.max or v1 limit_in_bytes), if root
    may make one here; else (None, why)."""
    for root, knob in ((CGROUP_V2, "memory.max"), (CGROUP_V1, "memory.limit_in_bytes")):
        if root == CGROUP_V2 and not (root / "cgroup.controllers").exists():
            continue
        group = root / f"lawchatd-bench-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            (group / knob).write_text(str(limit))
            return group, f"cgroup {group}/{knob}"
        except OSError as exc:
            why = f"{root}: {exc}"
            with contextlib.suppress(OSError):
                group.rmdir()
    return None, f"no cgroup ({why}); LAWCHATD_MEMORY_MAX instead"


class ServedModel:
    """lawchatd serve with the given models already "downloaded", the first one loaded."""

    def __init__(
        self,
        work: Path,
        models: dict[str, Path],
        *,
        threads: int,
        parallel: int | None = None,
        cgroup_limit: int | None = None,
    ) -> None:
        self.data = Path(tempfile.mkdtemp(dir=work, prefix="daemon-"))
        (self.data / "models").mkdir()
        entries = []
        for variant, path in models.items():
            os.link(path, self.data / "models" / path.name)
            entries.append(
                f'[[models]]\nvariant = "{variant}"\nrepo = "bench/law-chat-shaped"\n'
                f'filename = "{path.name}"\nsize = {path.stat().st_size}\n'
            )
        (self.data / "catalog.toml").write_text("\n".join(entries))
        self.first = next(iter(models))
        env = serve_env(
            self.data,
            API_KEY,
            LAWCHATD_CATALOG=str(self.data / "catalog.toml"),
            LAWCHATD_RESUME_ON_START="false",
            LAWCHATD_N_THREADS=str(threads),
        )
        if parallel:
            env["LAWCHATD_PARALLEL"] = str(parallel)
        self.cgroup: Path | None = None
        self.limit_mode = "none"
        command = serve_command()
        if cgroup_limit:
            self.cgroup, self.limit_mode = make_cgroup(cgroup_limit)
            if self.cgroup is None:
                env["LAWCHATD_MEMORY_MAX"] = str(cgroup_limit)
            else:  # join the cgroup before exec: every byte is counted
                join = f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"'
                command = ["sh", "-c", join, "sh", *command]
        self.process = Daemon(self.data, env, self.data / "daemon.log", API_KEY, command)
        self.headers = self.process.headers()

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.pid if self.process.proc else 0

    async def __aenter__(self) -> ServedModel:
        await self.process.start(timeout=60)
        try:
            await self.verified()
            status = await self.load(self.first)
            if not status.get("loaded") and status.get("status") != "ready":
                raise RuntimeError(f"load failed: {status}")
        except BaseException:
            await self.__aexit__()  # no daemon left holding 6 GB behind a failed start
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.process.close(timeout=30)
        for f in (self.data / "models").iterdir():
            f.unlink()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()

    async def verified(self, timeout: float = 600) -> None:
        """Wait until the daemon has hashed every model file it was given: a file it has not
        verified yet is "not downloaded" (asking GET /models/available starts the checks)."""
        deadline = time.monotonic() + timeout
        while True:
            models = (await self.get("/models/available"))["available_models"]
            if all(m["downloaded"] for m in models.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"files not verified: {models}")
            await asyncio.sleep(1)

    def log(self) -> str:
        return self.process.log()

    async def get(self, path: str) -> dict[str, Any]:
        return await self.process.get(path)

    async def load(self, variant: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=1800)
        body = {"model_variant": variant}
        return (await self.process.post("/models/load", body, timeout=timeout))[1]


class LlamaServer:
    """llama-cpp-python's own OpenAI server on the same file."""

    headers: dict[str, str] = {}

    def __init__(self, model: Path, threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--n_ctx", "4096", "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--chat_format", "llama-2", "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip

    async def __aenter__(self) -> LlamaServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        async with aiohttp.ClientSession() as s:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.url + "/v1/models") as r:
                        if r.status == 200:
                            return self
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("llama_cpp.server did not start")
                await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait, 30)


_DIRECT = r"""
import json, sys, time
from llama_cpp import Llama
model, threads = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=model, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
            chat_format="llama-2", verbose=False)
print("ready", flush=True)
for line in sys.stdin:
    messages, n = json.loads(line)
    started = time.monotonic(); first = last = None; count = 0
    for chunk in llm.create_chat_completion(messages, max_tokens=n, stream=True, temperature=0.8):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.monotonic(); first = first or last; count += 1
    print(json.dumps({"failed": 0, "ttft": first - started, "tokens": count,
                      "tok_s": (count - 1) / (last - first) if count > 1 else 0.0}), flush=True)
"""


class Direct:
    """llama-cpp-python's Llama called directly, in a process of its own that stays loaded
    and answers one chat per line on stdin."""

    def __init__(self, model: Path, threads: int) -> None:
        self.args = [sys.executable, "-c", _DIRECT, str(model), str(threads)]

    async def __aenter__(self) -> Direct:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        if (await self.proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("llama-cpp-python did not load the model")
        return self

    async def ask(self, messages: list[dict], tokens: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([messages, tokens]).encode() + b"\n")
        await self.proc.stdin.drain()
        return json.loads(await self.proc.stdout.readline())

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()
