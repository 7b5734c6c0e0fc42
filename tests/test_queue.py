"""The download queue: order, removal, the 409 old clients still get, a restart, `lawchatd pull`."""

from __future__ import annotations

import signal
from pathlib import Path

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.models import ModelFile, sha256_of
from tests.test_ops import finished, run_cli

SLOW = {"LAWCHATD_MAX_RATE": "2MB"}  # the 40 MB "big" runs for 20 s unless the cap is lifted


async def queue_of(daemon: Daemon) -> list[tuple[str, str]]:
    listed = (await daemon.get("/downloads"))["downloads"]
    return [(d["model_variant"], d["status"]) for d in listed]


async def enqueue(daemon: Daemon, variant: str) -> dict:
    status, reply = await daemon.post("/models/download", {"model_variant": variant, "queue": True})
    assert status == 200, reply
    return reply


async def wait_completed(daemon: Daemon, variant: str, timeout: float = 60) -> dict:
    return await daemon.wait_progress(
        lambda p: p["model_variant"] == variant and p["status"] in ("completed", "error"), timeout
    )


def downloaded(daemon: Daemon, model: ModelFile) -> bool:
    path = daemon.data_dir / "models" / model.filename
    return path.exists() and sha256_of(path) == model.sha256


async def test_queue_order_removal_and_the_409_for_old_clients(
    make_daemon, models: dict[str, ModelFile]
) -> None:
    daemon = await make_daemon(**SLOW).start()
    status, reply = await daemon.post("/models/download", {"model_variant": "big", "queue": True})
    assert (status, reply["status"]) == (200, "download_started")
    first = await enqueue(daemon, "tiny-a")
    assert (first["status"], first["position"], first["download_started"]) == ("queued", 1, False)
    assert (await enqueue(daemon, "tiny-b"))["position"] == 2
    assert (await enqueue(daemon, "tiny-a"))["position"] == 1  # asked again: keeps its place
    status, reply = await daemon.post("/models/download", {"model_variant": "tiny-small"})
    assert (status, reply) == (409, {"detail": "Another model (big) is currently downloading"})
    assert await queue_of(daemon) == [
        ("big", "downloading"),
        ("tiny-a", "queued"),
        ("tiny-b", "queued"),
    ]
    # The old progress route still shows the running download, never "queued".
    assert (await daemon.get("/models/download-progress"))["model_variant"] == "big"

    status, reply = await daemon.request("DELETE", "/downloads/tiny-a")
    assert status == 200, reply
    status, reply = await daemon.request("DELETE", "/downloads/tiny-a")
    assert (status, reply) == (404, {"detail": "tiny-a is not queued"})
    assert await queue_of(daemon) == [("big", "downloading"), ("tiny-b", "queued")]

    # A cancel ends the running download: the next queued one starts.
    status, reply = await daemon.post("/models/cancel-download")
    assert reply["cancelled"], reply
    await daemon.request("PUT", "/downloads/bandwidth", json={"max_rate": None})
    done = await wait_completed(daemon, "tiny-b")
    assert done["status"] == "completed", done
    assert downloaded(daemon, models["tiny-b"]) and not downloaded(daemon, models["tiny-a"])
    assert await queue_of(daemon) == []


async def test_the_queue_survives_a_restart(
    make_daemon, tmp_path: Path, models: dict[str, ModelFile]
) -> None:
    first = await make_daemon(**SLOW).start()
    await first.post("/models/download", {"model_variant": "big"})
    await enqueue(first, "tiny-a")
    await enqueue(first, "tiny-small")
    assert first.kill(signal.SIGTERM) == 0

    second = await make_daemon().start()  # no cap: big resumes, then the queue, in order
    assert [v for v, _ in await queue_of(second)] == ["big", "tiny-a", "tiny-small"]
    done = await wait_completed(second, "tiny-small")
    assert done["status"] == "completed", done
    for variant in ("big", "tiny-a", "tiny-small"):
        assert downloaded(second, models[variant]), variant
    log = second.log()
    assert log.index("queued download of tiny-a") < log.index("queued download of tiny-small")


async def test_pull_queues_behind_another_and_says_so(
    make_daemon, models: dict[str, ModelFile]
) -> None:
    daemon = await make_daemon(**SLOW).start()
    await daemon.post("/models/download", {"model_variant": "big"})
    proc = await run_cli(daemon, "pull", "tiny-small")
    line = await proc.stdout.readline()
    assert line.decode().startswith("tiny-small is queued behind the running download"), line
    assert await queue_of(daemon) == [("big", "downloading"), ("tiny-small", "queued")]
    code, out, err = await finished(await run_cli(daemon, "status"))
    assert code == 0 and "queued #1" in out, (out, err)
    await daemon.request("PUT", "/downloads/bandwidth", json={"max_rate": None})
    code, out, err = await finished(proc)
    assert code == 0, err
    assert out.splitlines()[-1] == "tiny-small: downloaded and verified", out
    assert downloaded(daemon, models["tiny-small"])
