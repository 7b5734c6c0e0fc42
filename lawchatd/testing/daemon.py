"""`lawchatd serve` as systemd would run it: a child process on a free port, its own data dir.

The one launcher for tests and benchmarks. It reads the port the daemon chose from the daemon's
own log line, so no port is picked (and raced for) ahead of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from lawchatd.testing.models import REPO, ModelFile, write_catalog

API_KEY = "test-key-0123456789"
LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")
ENDED = ("completed", "error", "cancelled")


def serve_command() -> list[str]:
    return [sys.executable, "-m", "lawchatd", "serve"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the machine's LAWCHATD_/HF_ settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAWCHATD_", "HF_"))}
    env.update(extra)
    return env


def serve_env(data_dir: Path, api_key: str = API_KEY, **settings: str) -> dict[str, str]:
    """`clean_env` for a daemon that reads no env file, binds any free port and loads nothing
    on its own."""
    env = clean_env(
        LAWCHATD_DATA_DIR=str(data_dir),
        LAWCHATD_PORT="0",
        LAWCHATD_API_KEY=api_key,
        LAWCHATD_AUTOLOAD="false",
        LAWCHATD_ENV_FILE="/nonexistent",
    )
    env.update(settings)
    return env


def daemon_env(data_dir: Path, mirror_url: str, catalog: Path, **overrides: str) -> dict[str, str]:
    """`serve_env` for the tests: a test Hub, one connection, and failures noticed in a second."""
    quick = {
        "LAWCHATD_HF_ENDPOINT": mirror_url,
        "LAWCHATD_CATALOG": str(catalog),
        "LAWCHATD_STALL_TIMEOUT": "1",
        "LAWCHATD_RETRY_BACKOFF": "0.05",
        "LAWCHATD_MAX_RETRIES": "4",
        "LAWCHATD_CONNECTIONS": "1",
        "LAWCHATD_N_CTX": "256",
        "LAWCHATD_N_THREADS": "1",
    }
    return serve_env(data_dir, **(quick | overrides))


@dataclass
class Daemon:
    """One daemon process: start it, talk to it with its API key, stop it."""

    data_dir: Path
    env: dict[str, str]
    log_path: Path
    api_key: str | None = API_KEY
    command: list[str] = field(default_factory=serve_command)
    cwd: Path | None = None  # `python -m` imports from here first: `--code DIR` in the benchmarks
    own_session: bool = False  # Ctrl-C then reaches only the parent, which stops the child
    proc: subprocess.Popen | None = None
    url: str = ""
    _log_offset: int = 0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def start(self, timeout: float = 30) -> Daemon:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.url = ""
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=self.own_session,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log())
            if match:
                self.url = match[1]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            await asyncio.sleep(0.05)
        await self.close()
        raise TimeoutError(f"daemon did not start:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        """What the daemon wrote since this start."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key or self.api_key
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

    async def wait_progress(self, predicate: Callable[[dict], bool], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        progress: dict = {}
        while time.monotonic() < deadline:
            progress = await self.get("/models/download-progress")
            if predicate(progress):
                return progress
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out; last progress {progress}\n{self.log()[-3000:]}")

    async def wait_done(self, timeout: float = 30) -> dict:
        return await self.wait_progress(lambda p: p["status"] in ENDED, timeout)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and wait for the exit: its return code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)

    async def close(self, timeout: float = 10) -> None:
        """SIGTERM (the daemon's graceful stop), SIGKILL after `timeout` seconds."""
        if self._session:
            await self._session.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)

    def stored_parts(self) -> list[tuple[int, int, int]]:
        with contextlib.closing(sqlite3.connect(self.data_dir / "lawchatd.sqlite3")) as db:
            return db.execute("SELECT start, end, done FROM parts ORDER BY start").fetchall()


async def bytes_received(daemon: Daemon) -> int:
    """The daemon's own count of bytes taken from the network (/metrics)."""
    session = await daemon.session()
    async with session.get(daemon.url + "/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith("lawchatd_download_bytes_total"))
    return int(float(line.split()[-1]))


@contextlib.contextmanager
def loaded_daemon(
    data: Path, hub_root: Path, models: dict[str, ModelFile], variant: str, **settings: str
) -> Iterator[Daemon]:
    """A daemon with `variant` already downloaded (copied from the fault hub's folder) and
    loaded; it needs no Hub. For a test module's chat clients (sync fixtures: it runs its own
    event loops)."""
    (data / "models").mkdir(exist_ok=True)
    shutil.copy(hub_root / REPO / models[variant].filename, data / "models")
    catalog = write_catalog(data / "catalog.toml", models)
    served = Daemon(data, daemon_env(data, "http://127.0.0.1:9", catalog, **settings),
                    data / "daemon.log")  # fmt: skip
    try:
        asyncio.run(served.start())
        asyncio.run(_load(served, variant))
        yield served
    finally:
        asyncio.run(served.close())


async def _load(daemon: Daemon, variant: str) -> None:
    # The copied file is checked once at start, in the background: until then a load is a 404.
    for _ in range(100):
        status, body = await daemon.post("/models/load", {"model_variant": variant})
        if status == 200:
            assert body.get("loaded") is True, body
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{variant} did not load: {status} {body}")
