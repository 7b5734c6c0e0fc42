"""Operations: the systemd unit, sd_notify, graceful stop, `pull` and `status`, `/metrics`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror
from lawchatd.testing.models import sha256_of

ROOT = Path(__file__).resolve().parent.parent
A = "tiny-a"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_unit_file_passes_systemd_analyze_verify(tmp_path):
    unit = (ROOT / "systemd" / "lawchatd.service").read_text()
    assert "Type=notify" in unit and "StateDirectory=lawchatd" in unit
    # verify checks that ExecStart exists: point it at this checkout's installed script.
    installed = Path(sys.executable).parent / "lawchatd"
    local = tmp_path / "lawchatd.service"
    local.write_text(unit.replace("/opt/lawchatd/.venv/bin/lawchatd", str(installed)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    example = (ROOT / "systemd" / "lawchatd.env.example").read_text()
    assert "#LAWCHATD_API_KEY=" in example


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[str] = []

    def lines(self) -> list[str]:
        return [line for message in self.received for line in message.splitlines()]

    async def wait_for(self, line: str, timeout: float = 15) -> list[str]:
        """Wait for a line starting with `line`."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while not any(got.startswith(line) for got in self.lines()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line!r} among {self.received}")
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), remaining)
            self.received.append(data.decode())
        return self.received


async def test_sigterm_mid_download_notifies_exits_0_and_the_next_start_resumes(
    make_daemon, mirror: Mirror, models, tmp_path
):
    notify = NotifySocket(tmp_path / "notify.sock")
    first = make_daemon(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
    await first.start()
    await notify.wait_for("READY=1")
    await notify.wait_for("WATCHDOG=1")
    mirror.faults.rate = 2_000_000
    await first.post("/models/download", {"model_variant": A})
    await first.wait_progress(lambda p: p["downloaded_size"] >= 1_500_000)
    await notify.wait_for("STATUS=downloading tiny-a ")  # a line a human can read
    assert any(line.endswith("%") for line in notify.lines() if "downloading" in line)

    session = await first.session()
    async with session.ws_connect(first.url + "/ws/progress") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
        stopping_at = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        while (message := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
    while first.proc.poll() is None:
        await asyncio.sleep(0.05)  # the mirror shares this loop: never block it
    assert first.proc.returncode == 0, first.log()
    assert time.monotonic() - stopping_at < 10
    await notify.wait_for("STOPPING=1")
    kept = sum(done for _, _, done in first.stored_parts())
    assert kept >= 1_500_000

    mirror.faults.rate = None
    await mirror.fresh_count()
    second = await make_daemon().start()
    done = await second.wait_done()
    assert done["status"] == "completed", done
    assert mirror.cdn_bytes() == models[A].size - kept  # nothing on disk was fetched again
    assert sha256_of(second.data_dir / "models" / models[A].filename) == models[A].sha256


async def run_cli(daemon: Daemon, *args: str, key: str | None = API_KEY, **env: str):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LAWCHATD_")}
    environment.update(LAWCHATD_URL=daemon.url, LAWCHATD_ENV_FILE="/nonexistent", **env)
    if key:
        environment["LAWCHATD_API_KEY"] = key
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lawchatd", *args,
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def finished(proc) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_pull_draws_progress_and_exits_0(daemon: Daemon, mirror: Mirror, models):
    mirror.faults.rate = 2_000_000  # slow enough for a progress line every 2 s
    code, out, err = await finished(await run_cli(daemon, "pull", A))
    assert code == 0, err
    lines = out.splitlines()
    assert any("%" in line and "MB/s" in line and "ETA" in line for line in lines), out
    assert lines[-1] == f"{A}: downloaded and verified"
    code, out, _ = await finished(await run_cli(daemon, "pull", A))
    assert code == 0 and "already downloaded" in out

    code, out, _ = await finished(await run_cli(daemon, "status"))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["VARIANT", "SIZE", "STATE", "LOADED"]
    assert any(row.split()[:4] == [A, "6.8", "MB", "downloaded"] for row in rows), out
    assert "model: none (none)" in out


async def test_pull_exit_codes(daemon: Daemon, mirror: Mirror):
    code, _, err = await finished(await run_cli(daemon, "pull", "no-such-variant"))
    assert code == 2 and "Unknown model variant" in err
    code, _, err = await finished(await run_cli(daemon, "pull", A, key="wrong"))
    assert code == 4 and "API key" in err
    mirror.faults.corrupt_at = 1000
    code, out, _ = await finished(await run_cli(daemon, "pull", A))
    assert code == 1 and "sha256 mismatch" in out
    daemon.kill(signal.SIGKILL)
    code, _, err = await finished(await run_cli(daemon, "status"))
    assert code == 3 and "cannot reach lawchatd" in err


async def test_pull_exits_3_when_the_daemon_goes_away(daemon: Daemon, mirror: Mirror):
    mirror.faults.rate = 1_000_000
    proc = await run_cli(daemon, "pull", A)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 300_000)
    daemon.kill(signal.SIGKILL)
    code, _, err = await finished(proc)
    assert code == 3 and "lost the connection" in err


async def test_ctrl_c_in_pull_cancels_and_keeps_the_partial(daemon: Daemon, mirror: Mirror, models):
    mirror.faults.rate = 1_000_000
    proc = await run_cli(daemon, "pull", A)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 500_000)
    proc.send_signal(signal.SIGINT)
    code, out, _ = await finished(proc)
    assert code == 130
    assert "cancelled" in out
    progress = await daemon.get("/models/download-progress")
    assert progress["status"] == "cancelled"
    assert (daemon.data_dir / "models" / f"{models[A].filename}.part").exists()


async def test_metrics_parse_and_count(daemon: Daemon, mirror: Mirror, models):
    await daemon.post("/models/download", {"model_variant": A})
    await daemon.wait_done()
    session = await daemon.session()
    done = ("lawchatd_downloads_total", (("outcome", "completed"),))
    # "completed" is pushed a moment before the manager counts the outcome: read until counted.
    async with asyncio.timeout(10):
        while True:
            async with session.get(daemon.url + "/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            if samples.get(done) and samples[("lawchatd_download_running", ())] == 0:
                break
            await asyncio.sleep(0.05)
    assert samples[("lawchatd_download_bytes_total", ())] == models[A].size
    assert samples[("lawchatd_downloads_total", (("outcome", "completed"),))] == 1
    assert samples[("lawchatd_download_running", ())] == 0
    assert samples[("lawchatd_websocket_clients", ())] == 0
    assert ("lawchatd_chat_requests_total", (("outcome", "accepted"),)) in samples
    assert ("lawchatd_model_load_seconds", ()) in samples
