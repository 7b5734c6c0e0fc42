"""Issue 8's defects, end to end: the daemon as a subprocess against an independent FlakyHub."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.flaky_hub import FlakyHub
from lawchatd.testing.models import sha256_of
from tests import engine_fixtures
from tests.harness import final_file, part_file, start_download

flaky, flaky_daemon = engine_fixtures.flaky, engine_fixtures.flaky_daemon  # fixtures
A = "tiny-a"
READ_BUFFER = 256 << 10  # what one drop may cost: bytes in flight, never a whole batch


async def download(daemon: Daemon, variant: str = A, **body) -> dict:
    return await start_download(daemon, variant, **body)


def persisted(daemon: Daemon) -> int:
    with sqlite3.connect(daemon.data_dir / "lawchatd.sqlite3") as db:
        return db.execute("SELECT COALESCE(SUM(done), 0) FROM parts").fetchone()[0]


async def quiet(hub: FlakyHub) -> None:
    """Wait until responses to a client that went away have stopped, then reset the counts."""
    last = -1
    while last != hub.bytes_served:
        last = hub.bytes_served
        await asyncio.sleep(0.2)
    hub.requests.clear()


# ---- 1: bytes received before a drop are kept ----------------------------------------------


async def test_bytes_before_a_drop_are_written_before_the_retry(flaky, flaky_daemon, models):
    daemon = await flaky_daemon(LAWCHATD_MAX_RETRIES="3").start()
    flaky.faults.drop_after = 1_500_000  # every response: a drop after 1.5 MB
    await download(daemon)
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    drops = len(flaky.requests) - 1
    assert drops >= models[A].size // 1_500_000
    assert flaky.bytes_served - models[A].size <= drops * READ_BUFFER
    assert sha256_of(final_file(daemon, models[A])) == models[A].sha256


# ---- 5: ranged requests ask for identity --------------------------------------------------


async def test_a_resume_asks_for_identity_and_gets_its_range(flaky, flaky_daemon, models):
    daemon = await flaky_daemon().start()
    flaky.faults.rate = 3_000_000
    await download(daemon)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_500_000)
    await daemon.post("/models/cancel-download")
    kept = (await daemon.get("/models/download-progress"))["downloaded_size"]
    flaky.faults.rate = None
    await quiet(flaky)
    await download(daemon)
    assert (await daemon.wait_done())["status"] == "completed"
    assert [r.status for r in flaky.requests] == [206]  # CloudFront would send 200 to gzip
    assert flaky.requests[0].accept_encoding == "identity"
    assert flaky.bytes_served == models[A].size - kept


# ---- 6: 429 Retry-After is honoured and said ---------------------------------------------


async def test_a_429_waits_as_long_as_retry_after_says(flaky, flaky_daemon, models):
    daemon = await flaky_daemon(LAWCHATD_RETRY_BACKOFF="0.05").start()
    flaky.faults.retry_after = 2
    flaky.faults.queue("429")
    await download(daemon)
    waiting = await daemon.wait_progress(lambda p: p["phase"] == "retrying")
    assert waiting["status"] == "downloading"
    assert waiting["message"] == "rate limited by the Hub, retrying in 2 s"
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    first, second = flaky.requests[0], flaky.requests[1]
    assert first.status == 429 and second.at - first.at >= 1.9


# ---- 3: restarts are bounded; a refused range costs no partial ---------------------------


async def test_ignored_ranges_and_drops_end_in_words_not_a_loop(flaky, flaky_daemon, models):
    daemon = await flaky_daemon(LAWCHATD_MAX_RETRIES="3").start()
    flaky.faults.ignore_range_always = True
    flaky.faults.drop_after = 1_000_000
    await download(daemon)
    done = await daemon.wait_done(timeout=60)
    assert done["status"] == "error"
    assert "ignores byte ranges" in done["error"] and "partial file is kept" in done["error"]
    assert flaky.bytes_served <= 8 * 1_000_000  # bounded: not 57 times the file
    assert part_file(daemon, models[A]).exists()


async def test_one_refused_range_retries_the_range_and_keeps_the_partial(
    flaky, flaky_daemon, models
):
    daemon = await flaky_daemon().start()
    flaky.faults.rate = 3_000_000
    await download(daemon)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 2_000_000)
    await daemon.post("/models/cancel-download")
    kept = (await daemon.get("/models/download-progress"))["downloaded_size"]
    await quiet(flaky)
    flaky.faults.queue("ignore_range")
    flaky.faults.queue("wrong_range")
    flaky.faults.rate = 20_000_000  # so the refused 200 is cut short, not sent whole
    await download(daemon)
    assert (await daemon.wait_done())["status"] == "completed"
    assert [r.status for r in flaky.requests] == [200, 206, 206]
    assert {r.range for r in flaky.requests} == {f"bytes={kept}-"}
    assert flaky.bytes_served < models[A].size - kept + 1_000_000
    assert sha256_of(final_file(daemon, models[A])) == models[A].sha256


async def test_a_server_without_ranges_or_etag_is_read_as_one_stream(flaky, flaky_daemon, models):
    daemon = await flaky_daemon(LAWCHATD_CONNECTIONS="4").start()
    flaky.faults.ignore_range_always = True
    flaky.faults.no_etag = True
    await download(daemon, "big")
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert sha256_of(final_file(daemon, models["big"])) == models["big"].sha256
    assert flaky.bytes_served <= 2 * models["big"].size


# ---- 2: an interrupted forced re-download resumes -----------------------------------------


async def test_a_killed_forced_download_resumes_and_is_not_called_completed(
    flaky, flaky_daemon, models
):
    first = await flaky_daemon().start()
    await download(first)
    assert (await first.wait_done())["status"] == "completed"
    flaky.faults.rate = 2_000_000
    await download(first, force=True)
    # The first download's "completed" row, at full size, may still be the one shown.
    await first.wait_progress(
        lambda p: p["status"] == "downloading" and p["downloaded_size"] >= 0.35 * models[A].size
    )
    first.kill(signal.SIGKILL)
    kept = persisted(first)
    assert kept > 0

    await quiet(flaky)
    flaky.faults.rate = 100_000  # slow enough that the resumed download is seen running
    second = await flaky_daemon().start()
    resumed = await second.get("/models/download-progress")
    assert resumed["status"] == "downloading", resumed
    flaky.faults.rate = None
    assert (await second.wait_done())["status"] == "completed"
    assert flaky.bytes_served == models[A].size - kept
    assert not part_file(second, models[A]).exists()
    assert sha256_of(final_file(second, models[A])) == models[A].sha256


# ---- 8: a deleted partial, a changed final file --------------------------------------------


async def test_a_partial_deleted_mid_download_stops_it_in_words(flaky, flaky_daemon, models):
    daemon = await flaky_daemon().start()
    flaky.faults.rate = 2_000_000
    await download(daemon)
    await daemon.wait_progress(lambda p: p["downloaded_size"] >= 1_000_000)
    part_file(daemon, models[A]).unlink()
    deleted_at = flaky.bytes_served
    done = await daemon.wait_done()
    assert done["status"] == "error"
    assert "deleted" in done["error"] and "download again" in done["error"]
    assert flaky.bytes_served - deleted_at < 2_000_000  # not 79 MB into the void


async def test_a_final_file_with_a_flipped_byte_is_no_longer_downloaded(
    flaky, flaky_daemon, models
):
    daemon = await flaky_daemon().start()
    await download(daemon)
    assert (await daemon.wait_done())["status"] == "completed"
    final = final_file(daemon, models[A])
    with open(final, "r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 1]))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entry = (await daemon.get("/models/available"))["available_models"][A]
        assert entry["downloaded"] is False  # never true while it is checked again
        if "changed on disk" in daemon.log():
            break
        await asyncio.sleep(0.1)
    assert (await download(daemon))["status"] == "download_started"
    assert (await daemon.wait_done())["status"] == "completed"
    assert sha256_of(final) == models[A].sha256
    assert (await daemon.get("/models/available"))["available_models"][A]["downloaded"] is True


# ---- 9: cleanup removes every partial nobody owns -----------------------------------------


async def test_cleanup_removes_partials_of_variants_no_longer_in_the_catalog(flaky_daemon):
    daemon = await flaky_daemon().start()
    models_dir = daemon.data_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    stale = models_dir / "law-chat.Q9_OLD.gguf.part"
    stale.write_bytes(b"x" * 1000)
    status, reply = await daemon.request("DELETE", "/models/cleanup")
    assert status == 200 and reply["files_cleaned"] == 1
    assert not stale.exists()


# ---- 4: kill -9 loses at most a fraction of a second of transfer ---------------------------


async def test_sigkill_loses_at_most_a_third_of_a_second_of_transfer(flaky, flaky_daemon, models):
    rate = 20_000_000
    first = await flaky_daemon().start()
    flaky.faults.rate = rate
    await download(first, "big")
    await first.wait_progress(lambda p: p["downloaded_size"] >= 12_000_000)
    await asyncio.sleep(0.37)  # between two of the old checkpoints
    first.kill(signal.SIGKILL)
    sent = flaky.bytes_served
    kept = persisted(first)
    print(f"kill -9 lost {sent - kept} bytes ({(sent - kept) / rate:.3f} s)")
    assert (sent - kept) / rate <= 0.3, f"lost {sent - kept} bytes"

    flaky.faults.rate = None
    await quiet(flaky)
    second = await flaky_daemon().start()
    assert (await second.wait_done())["status"] == "completed"
    assert flaky.bytes_served == models["big"].size - kept
    assert sha256_of(final_file(second, models["big"])) == models["big"].sha256


# ---- issue 13: a crawling connection does not hold the download's tail --------------------


async def test_an_idle_connection_takes_over_a_crawling_part(flaky, flaky_daemon, models):
    daemon = await flaky_daemon(LAWCHATD_CONNECTIONS="4").start()
    flaky.faults.queue("none")
    flaky.faults.queue("crawl")  # the second part's connection gets 300 kB/s, the rest all
    await download(daemon, "big")
    done = await daemon.wait_done()
    assert done["status"] == "completed", done
    assert sha256_of(final_file(daemon, models["big"])) == models["big"].sha256
    crawl = next(r for r in flaky.requests if r.fault == "crawl")
    # Its part had 10 MB; a faster connection took the rest over after about a second.
    assert crawl.sent < 3_000_000, crawl
