"""Downloads end to end: the daemon as a subprocess, the mirror as its Hub, faults injected."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess

import pytest

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.mirror_server import Mirror
from lawchatd.testing.models import ModelFile, sha256_of
from tests.harness import final_file, part_file, start_download

A = "tiny-a"


async def download(daemon: Daemon, variant: str = A, **body) -> dict:
    return await start_download(daemon, variant, **body)


async def test_download_completes_with_the_right_sha256(daemon, mirror, models):
    reply = await download(daemon)
    assert reply == {
        "message": f"Download of {A} started",
        "model_variant": A,
        "status": "download_started",
        "download_started": True,
    }
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert done["progress"] == 100
    assert done["downloaded_size"] == done["total_size"] == models[A].size
    assert done["speed"] == 0.0 and done["eta"] is None
    assert sha256_of(final_file(daemon, models[A])) == models[A].sha256
    assert not part_file(daemon, models[A]).exists()
    available = await daemon.get("/models/available")
    entry = available["available_models"][A]
    assert entry["downloaded"] is True
    assert entry["path"] == str(final_file(daemon, models[A]))
    assert entry["size"] == models[A].size and entry["filename"] == models[A].filename
    assert available["available_models"]["tiny-b"]["path"] is None
    assert (await download(daemon))["status"] == "already_downloaded"


@pytest.mark.parametrize(("connections", "variant"), [("1", A), ("4", "big")])
async def test_cancel_then_resume_fetches_only_the_missing_bytes(
    make_daemon, mirror: Mirror, models, connections, variant
):
    daemon = await make_daemon(LAWCHATD_CONNECTIONS=connections).start()
    mirror.faults.rate = 2_000_000  # per connection
    await download(daemon, variant)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_500_000)
    status, reply = await daemon.post("/models/cancel-download")
    assert status == 200 and reply["cancelled"] is True, reply
    cancelled = await daemon.get("/models/download-progress")
    assert cancelled["status"] == "cancelled"
    kept = cancelled["downloaded_size"]
    assert 0 < kept < models[variant].size
    assert part_file(daemon, models[variant]).exists()
    assert not final_file(daemon, models[variant]).exists()
    available = await daemon.get("/models/available")
    assert available["available_models"][variant]["partial_bytes"] == kept

    mirror.faults.rate = None
    await mirror.fresh_count()
    await download(daemon, variant)
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert mirror.cdn_bytes() == models[variant].size - kept
    assert sha256_of(final_file(daemon, models[variant])) == models[variant].sha256


async def test_parallel_parts_survive_drops_and_verify(make_daemon, mirror: Mirror, models):
    daemon = await make_daemon(LAWCHATD_CONNECTIONS="4").start()
    mirror.faults.update({"drop_after": 3_000_000, "drop_times": 3})
    await download(daemon, "big")
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert done["retries"] == 3
    starts = {r.range for r in mirror.stats.requests if r.path.startswith("/cdn/")}
    assert len(starts) >= 4 + 3  # four parts, three resumed after their drops
    # Each drop costs at most the bytes in flight, never a part from its start.
    assert mirror.cdn_bytes() < models["big"].size + 3 * 3_000_000
    assert sha256_of(final_file(daemon, models["big"])) == models["big"].sha256


async def test_sigkill_mid_download_resumes_at_start(make_daemon, mirror: Mirror, models):
    first = await make_daemon().start()
    mirror.faults.rate = 2_000_000
    await download(first)
    await first.wait_progress(lambda p: p["downloaded_size"] >= 2_500_000)
    await asyncio.sleep(0.6)  # let a checkpoint land
    assert first.kill(signal.SIGKILL) == -signal.SIGKILL
    persisted = sum(done for _, _, done in first.stored_parts())
    assert persisted > 0

    mirror.faults.rate = None
    await mirror.fresh_count()
    second = await make_daemon().start()  # same data dir; nobody asks it to download
    done = await second.wait_done()
    assert done["status"] == "completed", done
    assert mirror.cdn_bytes() == models[A].size - persisted
    assert sha256_of(final_file(second, models[A])) == models[A].sha256


async def test_no_resume_on_start_when_disabled(make_daemon, mirror: Mirror, models):
    first = await make_daemon().start()
    mirror.faults.rate = 2_000_000
    await download(first)
    await first.wait_progress(lambda p: p["downloaded_size"] >= 1_000_000)
    first.kill(signal.SIGKILL)
    second = await make_daemon(LAWCHATD_RESUME_ON_START="false").start()
    await asyncio.sleep(0.5)
    progress = await second.get("/models/download-progress")
    assert progress["status"] == "cancelled" and progress["model_variant"] == A
    assert part_file(second, models[A]).exists()


@pytest.mark.parametrize(
    "fault",
    [
        {"drop_after": 1_000_000, "drop_times": 3},
        {"status_503": 3},
        {"stall_after": 1_000_000, "stall_seconds": 4.0},
    ],
    ids=["dropped-connections", "503s", "stall"],
)
async def test_faults_are_survived(daemon, mirror: Mirror, models, fault):
    mirror.faults.update(fault)
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert done["retries"] >= 1
    assert sha256_of(final_file(daemon, models[A])) == models[A].sha256


async def test_endless_drops_end_in_a_clear_error_keeping_the_partial(daemon, mirror, models):
    mirror.faults.update({"drop_after": 0, "drop_times": None})
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "connection lost" in done["error"] and "retries" in done["error"]


async def test_corrupt_bytes_never_reach_the_final_name(daemon, mirror: Mirror, models):
    mirror.faults.corrupt_at = 3_000_000
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "sha256 mismatch" in done["error"]
    assert not final_file(daemon, models[A]).exists()
    assert not part_file(daemon, models[A]).exists()  # bytes that failed verification go


async def test_a_200_to_a_ranged_request_starts_over_and_never_appends(
    daemon, mirror: Mirror, models
):
    mirror.faults.rate = 2_000_000
    await download(daemon)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_000_000)
    await daemon.post("/models/cancel-download")
    mirror.faults.rate = None
    mirror.faults.ignore_range = True
    await mirror.fresh_count()
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert final_file(daemon, models[A]).stat().st_size == models[A].size
    assert sha256_of(final_file(daemon, models[A])) == models[A].sha256
    ranged = [r for r in mirror.stats.requests if r.path.startswith("/cdn/") and r.range]
    assert ranged and ranged[0].if_range  # it asked for a range, with the CDN's own ETag


async def test_changed_upstream_sha256_fails_before_any_byte(daemon, mirror: Mirror, models):
    mirror.faults.sha256_override = "0" * 64
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "upstream file changed" in done["error"]
    assert mirror.cdn_bytes() == 0


async def test_gated_repo_is_explained(daemon, mirror: Mirror):
    mirror.faults.gated = True
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "gated" in done["error"] and "LAWCHATD_HF_TOKEN" in done["error"]


async def test_missing_file_is_explained(make_daemon, mirror: Mirror, models, hub_root, tmp_path):
    from lawchatd.testing.models import REPO, write_catalog

    ghost = ModelFile("ghost", "ghost.gguf", 1000, "1" * 64)
    catalog = write_catalog(tmp_path / "ghost.toml", {**models, "ghost": ghost})
    daemon = await make_daemon(LAWCHATD_CATALOG=str(catalog)).start()
    await download(daemon, "ghost")
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "ghost.gguf was not found" in done["error"] and REPO in done["error"]


async def test_cleanup_removes_orphan_partials_but_not_the_running_one(
    daemon, mirror: Mirror, models
):
    mirror.faults.rate = 2_000_000
    await download(daemon, "tiny-b")
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 500_000)
    await daemon.post("/models/cancel-download")
    assert part_file(daemon, models["tiny-b"]).exists()

    await download(daemon, A)
    seen = []
    cleaned = None
    while True:
        progress = await daemon.get("/models/download-progress")
        seen.append(progress["downloaded_size"])
        if progress["status"] != "downloading":
            break
        if cleaned is None and progress["downloaded_size"] > 0:
            status, cleaned = await daemon.request("DELETE", "/models/cleanup")
            assert status == 200
            mirror.faults.rate = None
        await asyncio.sleep(0.05)
    assert cleaned == {"message": "Removed 1 partial file(s)", "files_cleaned": 1}
    assert not part_file(daemon, models["tiny-b"]).exists()
    assert seen == sorted(seen), "progress went backwards"
    assert progress["status"] == "completed"
    available = await daemon.get("/models/available")
    assert available["available_models"]["tiny-b"]["partial_bytes"] == 0


@pytest.fixture
def small_disk(tmp_path):
    """The daemon's models folder on an 80 MB tmpfs, so a test can fill it."""
    models_dir = tmp_path / "data" / "models"
    models_dir.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(models_dir)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield models_dir
    subprocess.run(["umount", "-l", str(models_dir)], check=False)


async def test_a_full_disk_mid_way_keeps_the_partial_and_the_daemon_healthy(
    small_disk, daemon, mirror: Mirror, models
):
    mirror.faults.rate = 2_000_000
    await download(daemon)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_000_000)
    filler = small_disk / "filler"
    # Another program takes all the space that is left.
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "disk is full" in done["error"] and "partial file" in done["error"]
    kept = done["downloaded_size"]
    assert kept > 0 and part_file(daemon, models[A]).exists()
    assert (await daemon.get("/healthz"))["status"] == "ok"

    filler.unlink()
    mirror.faults.rate = None
    await mirror.fresh_count()
    await download(daemon)
    assert (await daemon.wait_done())["status"] == "completed"
    assert mirror.cdn_bytes() == models[A].size - kept
    assert sha256_of(final_file(daemon, models[A])) == models[A].sha256


async def test_the_hf_token_goes_to_the_hub_and_never_to_the_cdn(make_daemon, hub_root, models):
    from lawchatd.testing.mirror_server import start_mirror
    from lawchatd.testing.models import HF_TOKEN

    # The CDN answers on "localhost": another origin than the Hub at 127.0.0.1.
    gated = await start_mirror(hub_root, token=HF_TOKEN, cdn_host="localhost")
    try:
        without = await make_daemon(data_dir=None, hub=gated).start()
        await download(without, "tiny-small")
        refused = await without.wait_done()
        assert refused["status"] == "error" and "gated" in refused["error"]
        await without.close()

        daemon = await make_daemon(hub=gated, LAWCHATD_HF_TOKEN=HF_TOKEN).start()
        await download(daemon, "tiny-small")
        assert (await daemon.wait_done())["status"] == "completed"
        hub = [r for r in gated.stats.requests if "/resolve/" in r.path and r.status == 302]
        cdn = [r for r in gated.stats.requests if r.path.startswith("/cdn/")]
        assert hub and all(r.authorization for r in hub)
        assert cdn and not any(r.authorization for r in cdn)
        assert all(r.host.startswith("localhost:") for r in cdn)
        assert HF_TOKEN not in daemon.log()
    finally:
        await gated.runner.cleanup()


async def test_a_partial_of_an_older_upstream_file_is_started_over(make_daemon, tmp_path):
    from lawchatd.testing.mirror_server import start_mirror
    from lawchatd.testing.models import REPO, make_big_gguf

    # A catalog without sha256 trusts the Hub's: when that changes, the partial is stale.
    hub = tmp_path / "hub"
    (hub / REPO).mkdir(parents=True)
    path = make_big_gguf(hub / REPO / "moving.gguf", 8 << 20)
    catalog = tmp_path / "moving.toml"
    catalog.write_text(
        f'[[models]]\nvariant = "moving"\nrepo = "{REPO}"\n'
        f'filename = "moving.gguf"\nsize = {8 << 20}\n'
    )
    mirror = await start_mirror(hub)
    try:
        daemon = await make_daemon(hub=mirror, LAWCHATD_CATALOG=str(catalog)).start()
        mirror.faults.rate = 2_000_000
        await download(daemon, "moving")
        await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_000_000)
        await daemon.post("/models/cancel-download")
        make_big_gguf(path, 8 << 20)  # upstream publishes new bytes of the same size
        mirror.faults.rate = None
        await mirror.fresh_count()
        await download(daemon, "moving")
        assert (await daemon.wait_done())["status"] == "completed"
        assert mirror.cdn_bytes() == 8 << 20  # every byte again, none appended to old ones
        final = daemon.data_dir / "models" / "moving.gguf"
        assert sha256_of(final) == sha256_of(path)
    finally:
        await mirror.runner.cleanup()


async def test_a_double_cancel_still_records_the_cancel(make_daemon, mirror: Mirror, models):
    daemon = await make_daemon().start()
    mirror.faults.rate = 2_000_000
    await download(daemon)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 500_000)
    replies = await asyncio.gather(*(daemon.post("/models/cancel-download") for _ in range(3)))
    assert all(status == 200 for status, _ in replies)
    assert (await daemon.get("/models/download-progress"))["status"] == "cancelled"
    assert daemon.kill(signal.SIGTERM) == 0
    again = await make_daemon().start()  # a cancel is the user's word: no resume at start
    await asyncio.sleep(0.5)
    progress = await again.get("/models/download-progress")
    assert progress["status"] == "cancelled" and progress["model_variant"] == A
    assert part_file(again, models[A]).exists()
