"""Start-up failures (issue 9, item 6): each ends in one line on stderr and its own exit code,
at once, with no traceback and nothing left hanging. The disks are real: a tmpfs mounted
read-only or filled up, in a mount namespace of the daemon's own (needs root; else skipped)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lawchatd.process.startup import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_PROTOCOL,
    EX_UNAVAILABLE,
)
from lawchatd.testing.daemon import daemon_env

pytestmark = pytest.mark.timeout(60)
SERVE = [sys.executable, "-m", "lawchatd", "serve"]


def start(env: dict[str, str], wrapper: str | None = None) -> tuple[int, str, float]:
    """Run `lawchatd serve` until it exits; (exit code, stderr, seconds it took)."""
    command = ["unshare", "--mount", "sh", "-c", f'{wrapper} && exec "$@"', "sh", *SERVE]
    began = time.monotonic()
    result = subprocess.run(
        command if wrapper else SERVE, env=env, capture_output=True, text=True, timeout=30
    )
    return result.returncode, result.stderr, time.monotonic() - began


def assert_one_line(stderr: str, *words: str) -> None:
    """The reason is one line, the last; before it at most the INFO lines of a start under way
    (a port is only found taken after the app has set up), never a traceback or an ERROR."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("lawchatd: cannot start: "), stderr
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr
    assert sum("cannot start" in line for line in lines) == 1, stderr
    for word in words:
        assert word in lines[-1], stderr


@pytest.fixture
def env(tmp_path: Path, catalog: Path) -> dict[str, str]:
    return daemon_env(tmp_path / "data", "http://127.0.0.1:9", catalog)


@pytest.fixture
def can_mount() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to mount a tmpfs for the daemon")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")


def test_a_file_that_is_not_sqlite(env, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lawchatd.sqlite3").write_bytes(os.urandom(8192))
    code, stderr, took = start(env)
    assert code == EX_DATAERR, stderr
    assert_one_line(stderr, "lawchatd.sqlite3", "not a usable SQLite database")
    assert took < 10


def test_a_database_from_a_newer_lawchatd(env, tmp_path):
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "lawchatd.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    code, stderr, _ = start(env)
    assert code == EX_PROTOCOL, stderr
    assert_one_line(stderr, "newer lawchatd", "schema 99")


def test_a_data_folder_that_cannot_be_created(env, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    env["LAWCHATD_DATA_DIR"] = str(tmp_path / "file" / "data")
    code, stderr, _ = start(env)
    assert code == EX_NOINPUT, stderr
    assert_one_line(stderr, "missing and cannot be created")


def test_a_read_only_data_folder(env, tmp_path, can_mount):
    data = tmp_path / "data"
    data.mkdir()
    code, stderr, _ = start(env, f"mount -t tmpfs -o ro,size=1m tmpfs '{data}'")
    assert code == EX_CANTCREAT, stderr
    assert_one_line(stderr, str(data), "read-only")


def test_a_full_disk(env, tmp_path, can_mount):
    data = tmp_path / "data"
    data.mkdir()
    fill = f"mount -t tmpfs -o size=256k tmpfs '{data}' && (cat /dev/zero > '{data}/fill' 2>/dev/null || true)"
    code, stderr, _ = start(env, fill)
    assert code == EX_IOERR, stderr
    assert_one_line(stderr, "full")


def test_a_port_already_taken(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["LAWCHATD_PORT"] = str(taken.getsockname()[1])
        code, stderr, _ = start(env)
    assert code == EX_UNAVAILABLE, stderr
    assert_one_line(stderr, "already in use")


def test_invalid_settings(env):
    env["LAWCHATD_PORT"] = "eighty"
    code, stderr, _ = start(env)
    assert code == EX_CONFIG, stderr
    assert_one_line(stderr, "LAWCHATD_PORT")


def test_a_failure_inside_the_running_loop_releases_everything(env, tmp_path):
    """Past the preflight (the database turns bad between the two), the daemon still ends at
    once: the half-started app is cleaned up, no SQLite thread keeps the process alive."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lawchatd.sqlite3").write_bytes(os.urandom(8192))
    code = (
        "import asyncio, sys\n"
        "from lawchatd.config import Settings\n"
        "from lawchatd.process.server import serve\n"
        "from lawchatd.process.startup import StartupError\n"
        "try:\n"
        "    asyncio.run(serve(Settings()))\n"
        "except StartupError as exc:\n"
        "    sys.exit(exc.code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == EX_DATAERR, result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_hears_the_reason_too(env, tmp_path):
    """With Type=notify, STATUS= carries the line `systemctl status` shows beside the journal."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lawchatd.sqlite3").write_bytes(os.urandom(8192))
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(5)
        env["NOTIFY_SOCKET"] = str(path)
        code, _, _ = start(env)
        message = notify.recv(4096).decode()
    assert code == EX_DATAERR
    assert message.startswith("STATUS=lawchatd: cannot start: ") and "SQLite" in message
