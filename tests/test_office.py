"""Running the models from the office: delete, unload (and its event), autoload policies, the
history of downloads, cleanup after a cancel, the unknown-setting warning and `lawchatd pull`'s
last line in a terminal. Real daemons against the test mirror."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
import time

import aiohttp
import pytest

from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror


async def download(daemon: Daemon, variant: str) -> dict:
    status, body = await daemon.post("/models/download", {"model_variant": variant})
    assert status == 200, body
    done = await daemon.wait_progress(lambda p: p["model_variant"] == variant and p["status"]
                                      in ("completed", "error", "cancelled"))  # fmt: skip
    return done


async def loaded_variant(daemon: Daemon) -> str | None:
    return (await daemon.get("/models/loaded"))["model_variant"]


async def test_delete_unload_and_the_unloaded_event(make_daemon, mirror: Mirror) -> None:
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="true").start()
    assert (await download(daemon, "tiny-small"))["status"] == "completed"
    assert await loaded_variant(daemon) == "tiny-small"

    # Refused in words while it is loaded; nothing changes.
    status, refused = await daemon.request("DELETE", "/models/tiny-small")
    assert status == 409 and "unload it first" in refused["detail"]
    assert (await daemon.get("/models/available"))["available_models"]["tiny-small"]["downloaded"]

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{daemon.url}/ws/progress?token={API_KEY}") as ws,
    ):
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
        # The old page's Unload: the variant in a JSON body.
        status, body = await daemon.post("/models/unload", {"model_variant": "tiny-small"})
        assert status == 200 and body["status"] == "unloaded", body
        event = await ws.receive_json(timeout=5)
        while event.get("type") != "model":
            event = await ws.receive_json(timeout=5)
        assert event["event"] == "unloaded" and event["model_variant"] == "tiny-small"

    # Not loaded: the file goes, the disk use says so, a second delete is a 404 in words.
    before = (await daemon.get("/models/available"))["disk"]
    status, deleted = await daemon.request("DELETE", "/models/tiny-small")
    assert status == 200 and deleted["status"] == "deleted" and deleted["freed_bytes"] > 0
    available = await daemon.get("/models/available")
    assert available["available_models"]["tiny-small"]["downloaded"] is False
    assert available["disk"]["models_bytes"] == before["models_bytes"] - deleted["freed_bytes"]
    assert not (daemon.data_dir / "models" / "tiny-small.gguf").exists()
    status, missing = await daemon.request("DELETE", "/models/tiny-small")
    assert status == 404 and "not downloaded" in missing["detail"]
    # DELETE /models/cleanup keeps its meaning (partial files), it is not a variant.
    status, cleaned = await daemon.request("DELETE", "/models/cleanup")
    assert status == 200 and "files_cleaned" in cleaned


async def test_delete_is_refused_while_downloading_and_cleanup_resets_progress(
    daemon: Daemon, mirror: Mirror
) -> None:
    mirror.faults.rate = 1_000_000
    await daemon.post("/models/download", {"model_variant": "tiny-a"})
    await daemon.wait_progress(lambda p: p["downloaded_size"] > 500_000)
    status, refused = await daemon.request("DELETE", "/models/tiny-a")
    assert status == 409 and "cancel its download first" in refused["detail"]
    status, cancelled = await daemon.post("/models/cancel-download")
    assert cancelled["cancelled"] is True
    kept = (await daemon.get("/models/available"))["available_models"]["tiny-a"]["partial_bytes"]
    assert kept > 0

    # Cleanup deletes the partial (its old meaning) and the progress no longer claims its bytes.
    status, cleaned = await daemon.request("DELETE", "/models/cleanup")
    assert status == 200 and cleaned["files_cleaned"] == 1
    progress = await daemon.get("/models/download-progress")
    assert progress["status"] == "cancelled" and progress["downloaded_size"] == 0
    assert progress["progress"] == 0
    available = await daemon.get("/models/available")
    assert available["available_models"]["tiny-a"]["partial_bytes"] == 0

    # The history: newest first, who asked, the outcome, how long and how fast.
    history = (await daemon.get("/downloads/history"))["downloads"]
    assert [run["outcome"] for run in history] == ["cancelled"]
    run = history[0]
    assert run["variant"] == "tiny-a" and run["started_by"] == "admin"
    assert run["bytes"] >= 500_000 and run["duration_seconds"] > 0
    assert 100_000 < run["average_speed"] < 2_000_000


async def test_autoload_empty_keeps_the_model_in_use(make_daemon, mirror: Mirror) -> None:
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="empty").start()
    models = (await daemon.get("/models/available"))["available_models"]
    assert models["tiny-small"]["on_download"] == "load"  # nothing loaded yet
    await download(daemon, "tiny-small")
    assert await loaded_variant(daemon) == "tiny-small"
    available = await daemon.get("/models/available")
    assert available["autoload"] == "empty"
    assert available["available_models"]["tiny-a"]["on_download"] == "keep"
    await download(daemon, "tiny-a")
    assert await loaded_variant(daemon) == "tiny-small"  # the one everybody uses stays
    history = (await daemon.get("/downloads/history"))["downloads"]
    assert [(r["variant"], r["outcome"]) for r in history] == [
        ("tiny-a", "completed"),
        ("tiny-small", "completed"),
    ]


async def test_autoload_never_and_the_words_of_a_bad_setting(make_daemon, mirror: Mirror) -> None:
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="never", LAWCHATD_APIKEY="typo").start()
    log = daemon.log()
    assert "LAWCHATD_APIKEY is not a lawchatd setting and is ignored; did you mean " \
        "LAWCHATD_API_KEY?" in log  # fmt: skip
    assert f"data folder {daemon.data_dir}" in log and "Hub endpoint: http://127.0.0.1:" in log
    assert "catalog: " in log
    models = (await daemon.get("/models/available"))["available_models"]
    assert {m["on_download"] for m in models.values()} == {"keep"}
    await download(daemon, "tiny-small")
    assert await loaded_variant(daemon) is None
    await daemon.close()

    bad = make_daemon(LAWCHATD_AUTOLOAD="sometimes")
    with pytest.raises(RuntimeError, match="LAWCHATD_AUTOLOAD.*always"):
        await bad.start()


async def test_pull_ends_with_a_clean_line_in_a_terminal(daemon: Daemon, mirror: Mirror) -> None:
    mirror.faults.rate = 3_000_000  # several bars drawn before the last one
    env = {**daemon.env, "LAWCHATD_URL": daemon.url}
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lawchatd", "pull", "tiny-a"],
        env=env, stdin=terminal, stdout=terminal, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.to_thread(os.read, controller, 4096)
        except OSError:  # the child ended and the terminal closed
            break
        if not chunk:
            break
        output += chunk
    assert await asyncio.to_thread(proc.wait, 10) == 0, output
    os.close(controller)
    text = output.decode()
    # What the terminal shows: each `\r` goes back to the start, `\x1b[K` erases what is left.
    screen = [render(line) for line in text.replace("\r\n", "\n").split("\n") if line]
    assert screen[-1] == "tiny-a: downloaded and verified", screen
    final_bar = screen[-2]
    assert final_bar.startswith("tiny-a") and final_bar.endswith("completed"), screen


def render(line: str) -> str:
    """One terminal line after carriage returns and erase-to-end-of-line."""
    shown = ""
    for piece in line.split("\r"):
        if "\x1b[K" in piece:
            text = piece.split("\x1b[K")[0]
            shown = text
        else:
            shown = piece + shown[len(piece) :]
    return shown


def test_unknown_variables_name_the_nearest_setting() -> None:
    from lawchatd.process.startup import unknown_variables

    environ = {
        "LAWCHATD_APIKEY": "x",
        "LAWCHATD_DATADIR": "/srv",
        "LAWCHATD_PORT": "8000",  # known
        "LAWCHATD_MIRROR_TOKEN": "t",  # read by `lawchatd mirror`
        "LAWCHATD_SOMETHING_ELSE": "1",
        "HOME": "/root",
    }
    assert unknown_variables(environ) == [
        ("LAWCHATD_APIKEY", "LAWCHATD_API_KEY"),
        ("LAWCHATD_DATADIR", "LAWCHATD_DATA_DIR"),
        ("LAWCHATD_SOMETHING_ELSE", None),
    ]


async def test_history_is_trimmed_and_survives_a_torn_line(tmp_path) -> None:
    from lawchatd.downloads import history as history_module
    from lawchatd.downloads.history import History, Run

    book = History(tmp_path / "history.jsonl")
    for n in range(history_module.KEEP * 3):
        await book.add(Run(f"v{n}", "admin", "completed", 0.0, 2.0, 1000))
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write('{"variant": "cut')  # a power loss mid-line
    runs = await book.recent(limit=10_000)
    assert history_module.KEEP <= len(runs) <= 2 * history_module.KEEP + 1
    assert runs[0]["variant"] == f"v{history_module.KEEP * 3 - 1}"  # newest first
    assert runs[0]["duration_seconds"] == 2.0 and runs[0]["average_speed"] == 500.0
