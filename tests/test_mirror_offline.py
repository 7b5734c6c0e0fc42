"""An office mirror that offline clients can trust (issue 19), with huggingface_hub 2.x as the
client and an upstream mirror on loopback that is stopped and started again.

One commit per upstream commit, whatever DIR holds; the upstream's tree offline, with a 503 in
words for what is missing; a 503 before the client's timeout while the upstream is away; the
fill going on within 2 s of the upstream coming back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from lawchatd.fetch import FetchOptions
from lawchatd.mirror.app import CORE
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.ports import free_port

pytest.importorskip("huggingface_hub")

REPO = "TheBloke/law-chat-GGUF"
GGUF = "law-chat.Q4_0.gguf"
BIG = "law-chat.Q8_0.gguf"
FAST = FetchOptions(connections=2, max_retries=20, retry_backoff=0.1, stall_timeout=2.0)
CLIENT_WAIT = 2.0  # the office's --client-wait, short for the test


@dataclass
class Office:
    """A pull-through office mirror, its upstream (stoppable), and an hf client's home."""

    root: Path
    hub_root: Path
    upstream_port: int
    upstream: Mirror | None
    office: Mirror
    home: Path

    async def stop_upstream(self) -> None:
        assert self.upstream is not None
        await self.upstream.runner.cleanup()
        self.upstream = None

    async def start_upstream(self) -> Mirror:
        self.upstream = await start_mirror(self.hub_root, port=self.upstream_port)
        return self.upstream

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LAWCHATD_"))}
        env.update(
            HF_ENDPOINT=self.office.url,
            HF_HOME=str(self.home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_XET="1",
            NO_PROXY="127.0.0.1",
        )
        return env | extra

    async def python(self, code: str, **env: str) -> dict:
        """Run `code` with huggingface_hub as hh; it fills `out` (exceptions land in out["error"]
        and out["cause"]), printed as JSON."""
        indented = "\n".join("    " + line for line in code.strip().splitlines())
        script = (
            "import json, time, huggingface_hub as hh\nout = {}\nt0 = time.monotonic()\ntry:\n"
            f"{indented}\nexcept Exception as e:\n"
            "    out['error'] = f'{type(e).__name__}: {e}'\n"
            "    out['cause'] = repr(e.__cause__)\n"
            "out['seconds'] = time.monotonic() - t0\nprint(json.dumps(out))"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env=self.env(**env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-3000:]
        return json.loads(out.decode().splitlines()[-1])

    async def hf(self, *args: str, **env: str) -> tuple[int, str]:
        """The `hf` CLI: its exit status, and its stdout and stderr together."""
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("hf")), *args, env=self.env(**env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        return proc.returncode or 0, out.decode()

    def snapshots(self) -> list[str]:
        folder = self.home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    async def status(self) -> dict:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.office.url}/_mirror/status") as resp,
        ):
            return await resp.json()

    async def repo_status(self) -> dict:
        return next(r for r in (await self.status())["repos"] if r["repo"] == REPO)


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[Office]:
    hub_root = tmp_path / "hub"
    (hub_root / REPO / "sub").mkdir(parents=True)
    files = {
        GGUF: b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + os.urandom(300_000),
        BIG: b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + os.urandom(6_000_000),
        "README.md": b"# law-chat\n",
        "config.json": b'{"model_type": "llama"}\n',
        "sub/notes.txt": b"notes\n",
    }
    for name, data in files.items():
        (hub_root / REPO / name).write_bytes(data)
    port = free_port()
    upstream = await start_mirror(hub_root, port=port)
    (tmp_path / "office").mkdir()
    office = await start_mirror(
        tmp_path / "office", upstream=upstream.url, fetch_options=FAST, client_wait=CLIENT_WAIT
    )
    # huggingface_hub retries a 503 five times, each after Retry-After + 1 s: 0 keeps it short.
    office.runner.app[CORE].pull.retry_after = 0
    o = Office(tmp_path / "office", hub_root, port, upstream, office, tmp_path / "hf-home")
    try:
        yield o
    finally:
        await o.office.runner.cleanup()
        if o.upstream is not None:
            await o.upstream.runner.cleanup()


async def _get(url: str, **headers: str) -> tuple[int, bytes, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def _read_until_cut(url: str) -> tuple[int, int]:
    """GET `url`: its status and how many body bytes came before the end or a cut."""
    got = 0
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        try:
            async for chunk in resp.content.iter_any():
                got += len(chunk)
        except aiohttp.ClientPayloadError:
            pass  # cut short
        return resp.status, got


async def _upstream_commit(office: Office) -> str:
    assert office.upstream is not None
    status, body, _ = await _get(f"{office.upstream.url}/api/models/{REPO}")
    assert status == 200
    return json.loads(body)["sha"]


async def test_offline_after_a_partial_fill_one_snapshot_and_what_is_missing_named(
    office: Office,
) -> None:
    commit = await _upstream_commit(office)
    code = f"""
for name in ("config.json", {GGUF!r}):
    out[name] = hh.hf_hub_download({REPO!r}, name)
out["sha"] = hh.model_info({REPO!r}).sha
"""
    online = await office.python(code)
    assert "error" not in online, online
    assert online["sha"] == commit and office.snapshots() == [commit]
    held = await office.repo_status()
    assert held["commit"] == commit and held["held"] == ["config.json", GGUF]
    assert held["missing"] == ["README.md", BIG, "sub/notes.txt"]

    await office.stop_upstream()
    # Online against the office: the upstream's whole tree, what is held, and a 503 in words.
    status, body, headers = await _get(f"{office.office.url}/api/models/{REPO}")
    assert status == 200 and json.loads(body)["sha"] == commit
    assert len(json.loads(body)["siblings"]) == 5
    status, _, headers = await _get(f"{office.office.url}/{REPO}/resolve/main/README.md")
    assert status == 503 and "Retry-After" in headers
    assert "README.md is not in this mirror yet" in headers["X-Error-Message"]
    assert "unreachable" in headers["X-Error-Message"]
    down = await office.repo_status()
    assert "unreachable" in down["last_error"] and down["upstream"] == "down"

    tried = await office.python(f"out['path'] = hh.snapshot_download({REPO!r})")
    # The first file missing that its workers hit, by name, in the mirror's words.
    assert re.search(r"(README.md|Q8_0.gguf|notes.txt) is not in this mirror yet", tried["cause"])
    assert tried["seconds"] < 15, tried  # each 503 at once; the client's own retries aside

    # Offline: every file fetched, in the one snapshot folder of the upstream's commit.
    offline = await office.python(
        f"""
out["path"] = hh.snapshot_download({REPO!r}, allow_patterns=["config.json", "*Q4_0*"])
out["file"] = hh.hf_hub_download({REPO!r}, {GGUF!r})
""",
        HF_HUB_OFFLINE="1",
    )
    assert "error" not in offline, offline
    assert Path(offline["path"]).name == commit
    assert (Path(offline["path"]) / "config.json").read_bytes() == (
        office.hub_root / REPO / "config.json"
    ).read_bytes()
    assert Path(offline["file"]).read_bytes() == (office.hub_root / REPO / GGUF).read_bytes()  # noqa: ASYNC240
    assert office.snapshots() == [commit]
    # The hf CLI the same: offline, what was fetched; online, the mirror's reason for the rest.
    rc, said = await office.hf("download", REPO, "config.json", HF_HUB_OFFLINE="1")
    assert rc == 0 and said.strip().endswith(f"{commit}/config.json"), said
    rc, said = await office.hf("download", REPO, "README.md")
    assert rc != 0 and "README.md is not in this mirror yet" in said, said


async def test_one_commit_before_during_and_after_fills(office: Office) -> None:
    commit = await _upstream_commit(office)
    assert office.upstream is not None
    office.upstream.faults.rate = 2_000_000  # the big file takes about 3 s
    url = f"{office.office.url}/{REPO}/resolve"
    commits = set()
    for _ in range(2):  # before
        commits.add((await _get(f"{url}/main/config.json"))[2]["X-Repo-Commit"])
    filling = asyncio.create_task(_get(f"{url}/main/{BIG}"))
    for _ in range(5):  # during: every route, every file
        _, info, _ = await _get(f"{office.office.url}/api/models/{REPO}")
        commits.add(json.loads(info)["sha"])
        _, _, headers = await _get(f"{url}/main/{GGUF}")
        commits.add(headers["X-Repo-Commit"])
        _, refs, _ = await _get(f"{office.office.url}/api/models/{REPO}/refs")
        commits.add(json.loads(refs)["branches"][0]["targetCommit"])
        await asyncio.sleep(0.2)
    status, body, headers = await filling
    assert status == 200 and len(body) == (office.hub_root / REPO / BIG).stat().st_size
    commits.add(headers["X-Repo-Commit"])
    out = await office.python(
        f"out['p'] = hh.snapshot_download({REPO!r}); out['sha'] = hh.model_info({REPO!r}).sha"
    )
    assert "error" not in out, out
    commits.add(out["sha"])
    assert commits == {commit}  # after: the same
    assert office.snapshots() == [commit]
    # The upstream publishes a new commit: the branch moves, once, with it.
    (office.hub_root / REPO / "README.md").write_bytes(b"# law-chat, new\n")
    newer = await _upstream_commit(office)
    assert newer != commit
    assert (await _get(f"{url}/main/README.md"))[2]["X-Repo-Commit"] == newer
    status, body, _ = await _get(f"{url}/{commit}/config.json")  # the old one still resolves
    assert status == 200


async def test_a_long_outage_is_a_503_before_the_clients_timeout_and_the_fill_resumes(
    office: Office,
) -> None:
    assert office.upstream is not None
    office.upstream.faults.rate = 1_000_000
    size = (office.hub_root / REPO / BIG).stat().st_size
    url = f"{office.office.url}/{REPO}/resolve/main/{BIG}"
    reader = asyncio.create_task(_read_until_cut(url))
    for _ in range(100):
        fetching = (await office.status())["fetches"]
        if fetching and fetching[0]["downloaded"] > 1_000_000:
            break
        await asyncio.sleep(0.1)
    await office.stop_upstream()
    stopped = time.monotonic()
    # The client streaming the fill is cut within the client wait (it would resume with a Range).
    status, got = await asyncio.wait_for(reader, CLIENT_WAIT + 8)
    assert status == 200 and got < size and time.monotonic() - stopped < CLIENT_WAIT + 8
    # A client asking now hears a 503 with the reason, long before huggingface_hub's 10 s.
    out = await office.python(
        f"out['p'] = hh.hf_hub_download({REPO!r}, {BIG!r})", HF_HUB_DOWNLOAD_TIMEOUT="10"
    )
    assert "503" in out["cause"] and "unreachable" in out["cause"], out
    assert out["seconds"] < 10, out
    # A client asking the bytes themselves (as after a cut, with a Range) waits at most the
    # client wait for them, then hears a 503 with Retry-After and the reason.
    sha = hashlib.sha256((office.hub_root / REPO / BIG).read_bytes()).hexdigest()  # noqa: ASYNC240
    asked = time.monotonic()
    status, _, headers = await _get(
        f"{office.office.url}/cdn/{REPO}/{sha}/{BIG}", Range=f"bytes={size - 10}-"
    )
    assert time.monotonic() - asked < CLIENT_WAIT + 1.5
    assert status == 503 and "Retry-After" in headers
    assert "unreachable" in headers["X-Error-Message"], headers
    waiting = (await office.status())["fetches"]
    assert waiting and "unreachable" in (waiting[0]["waiting"] or ""), waiting
    done_before = waiting[0]["downloaded"]

    await asyncio.sleep(1)  # the outage goes on past the engine's own retries (already given up)
    office.upstream = await office.start_upstream()
    office.upstream.faults.rate = None
    back = time.monotonic()
    while True:
        fetches = (await office.status())["fetches"]
        if not fetches or fetches[0]["downloaded"] > done_before:
            break
        assert time.monotonic() - back < 2.0, fetches
        await asyncio.sleep(0.05)
    resumed_in = time.monotonic() - back
    assert resumed_in < 2.0
    for _ in range(200):
        if not (await office.status())["fetches"]:
            break
        await asyncio.sleep(0.05)
    status, body, _ = await _get(url)
    assert status == 200 and body == (office.hub_root / REPO / BIG).read_bytes()
