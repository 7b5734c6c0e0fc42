"""Real servers on loopback for the tests: the mirror in-process, the daemon as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from lawchatd.mirror import create_mirror_app
from tests import mirror_faults
from tests.ggufgen import make_tiny_llama
from tests.mirror_faults import FAULTS, STATS, Faults, MirrorStats  # re-exported for tests

REPO = "test-org/law-chat-test"
API_KEY = "test-key-0123456789"
HF_TOKEN = "hf_test_token_abcdef"
LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


@dataclass(frozen=True)
class ModelFile:
    variant: str
    filename: str
    size: int
    sha256: str


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def make_big_gguf(path: Path, size: int) -> Path:
    """A GGUF header and incompressible bytes: passes download checks, not meant to load."""
    with open(path, "wb") as f:
        header = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
        f.write(header)
        f.write(os.urandom(size - len(header)))
    return path


def build_models(root: Path) -> dict[str, ModelFile]:
    """The test repo: loadable models of a few MB, one with broken tensors, one of 40 MB."""
    folder = root / REPO
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        "big": make_big_gguf(folder / "big.gguf", 40 << 20),
        "tiny-a": make_tiny_llama(folder / "tiny-a.gguf", seed=1, pad_bytes=6 << 20),
        "tiny-b": make_tiny_llama(folder / "tiny-b.gguf", seed=2, pad_bytes=6 << 20),
        "tiny-small": make_tiny_llama(folder / "tiny-small.gguf", seed=3),
        "tiny-broken": make_tiny_llama(folder / "tiny-broken.gguf", seed=4, broken_tensors=True),
    }
    return {
        variant: ModelFile(variant, path.name, path.stat().st_size, sha256_of(path))
        for variant, path in made.items()
    }


def write_catalog(path: Path, models: dict[str, ModelFile], extra: str = "") -> Path:
    entries = [
        f'[[models]]\nvariant = "{m.variant}"\nrepo = "{REPO}"\nfilename = "{m.filename}"\n'
        f'size = {m.size}\nsha256 = "{m.sha256}"\nlabel = "test model {m.variant}"\n'
        for m in models.values()
    ]
    path.write_text("\n".join(entries) + extra)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Mirror:
    url: str
    faults: Faults
    stats: MirrorStats
    runner: web.AppRunner

    def cdn_bytes(self) -> int:
        return self.stats.bytes_served

    async def fresh_count(self) -> None:
        """Reset the counters once responses to a client that went away have stopped writing."""
        last = -1
        while last != self.stats.bytes_served:
            last = self.stats.bytes_served
            await asyncio.sleep(0.2)
        self.stats.reset()


async def serve(
    app: web.Application,
    port: int = 0,
    *,
    ssl_context: Any = None,
    shutdown_timeout: float = 0.5,
) -> tuple[str, web.AppRunner]:
    """Run `app` on loopback (port 0: any free one): its URL, and the runner to clean up."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    return f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", runner


@contextlib.asynccontextmanager
async def served(app: web.Application, port: int = 0, **options: Any) -> AsyncIterator[str]:
    """`serve` for the length of a block."""
    url, runner = await serve(app, port, **options)
    try:
        yield url
    finally:
        await runner.cleanup()


async def start_mirror(
    root: Path,
    *,
    token: str | None = None,
    cdn_host: str = "127.0.0.1",
    port: int | None = None,
    **options: Any,
) -> Mirror:
    """The mirror app with fault injection; `options` go to create_mirror_app (upstream=...)."""
    port = port or free_port()
    app = create_mirror_app(root, cdn_base=f"http://{cdn_host}:{port}", token=token, **options)
    mirror_faults.install(app)
    url, runner = await serve(app, port)
    return Mirror(url, app[FAULTS], app[STATS], runner)


@dataclass
class Daemon:
    """`lawchatd serve` as systemd would run it, on a free port, with its own data dir."""

    data_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    url: str = ""
    _log_offset: int = 0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def start(self, timeout: float = 30) -> Daemon:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lawchatd", "serve"], env=self.env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log())
            if match:
                self.url = match[1]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"daemon did not start:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def headers(self, key: str | None = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self.headers())
        return self._session

    async def get(self, path: str) -> dict:
        session = await self.session()
        async with session.get(self.url + path) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            return await resp.json()

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        session = await self.session()
        async with session.request(method, self.url + path, **kwargs) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, body: object = None, **kwargs) -> tuple[int, dict]:
        return await self.request("POST", path, json=body, **kwargs)

    async def wait_progress(self, predicate, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        progress: dict = {}
        while time.monotonic() < deadline:
            progress = await self.get("/models/download-progress")
            if predicate(progress):
                return progress
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out; last progress {progress}\n{self.log()[-3000:]}")

    async def wait_done(self, timeout: float = 30) -> dict:
        return await self.wait_progress(
            lambda p: p["status"] in ("completed", "error", "cancelled"), timeout
        )

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)

    async def close(self) -> None:
        if self._session:
            await self._session.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def stored_parts(self) -> list[tuple[int, int, int]]:
        with contextlib.closing(sqlite3.connect(self.data_dir / "lawchatd.sqlite3")) as db:
            return db.execute("SELECT start, end, done FROM parts ORDER BY start").fetchall()


def daemon_env(data_dir: Path, mirror_url: str, catalog: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAWCHATD_", "HF_"))}
    env.update(
        LAWCHATD_DATA_DIR=str(data_dir),
        LAWCHATD_PORT="0",
        LAWCHATD_HF_ENDPOINT=mirror_url,
        LAWCHATD_CATALOG=str(catalog),
        LAWCHATD_API_KEY=API_KEY,
        LAWCHATD_STALL_TIMEOUT="1",
        LAWCHATD_RETRY_BACKOFF="0.05",
        LAWCHATD_MAX_RETRIES="4",
        LAWCHATD_CONNECTIONS="1",
        LAWCHATD_AUTOLOAD="false",
        LAWCHATD_N_CTX="256",
        LAWCHATD_N_THREADS="1",
        LAWCHATD_ENV_FILE="/nonexistent",
    )
    env.update(overrides)
    return env


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def start_download(daemon: Daemon, variant: str, **body) -> dict:
    """POST /models/download and insist it was accepted."""
    status, reply = await daemon.post("/models/download", {"model_variant": variant, **body})
    assert status == 200, reply
    return reply


def final_file(daemon: Daemon, model: ModelFile) -> Path:
    return daemon.data_dir / "models" / model.filename


def part_file(daemon: Daemon, model: ModelFile) -> Path:
    return daemon.data_dir / "models" / f"{model.filename}.part"


async def bytes_received(daemon: Daemon) -> int:
    """The daemon's own count of bytes taken from the network (/metrics)."""
    session = await daemon.session()
    async with session.get(daemon.url + "/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith("lawchatd_download_bytes_total"))
    return int(float(line.split()[-1]))
