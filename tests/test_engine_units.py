"""The engine's parts on their own: store transactions, the partial file, the fetcher, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiosqlite
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from lawchatd.config import Settings
from lawchatd.downloads.catalog import Catalog, ModelSpec
from lawchatd.downloads.journal import RowJournal, forget_partial, transition
from lawchatd.downloads.manager import DownloadManager
from lawchatd.errors import in_words
from lawchatd.fetch import Entry
from lawchatd.fetch.errors import DownloadFailed
from lawchatd.fetch.fetcher import Counters, Fetcher, Link
from lawchatd.fetch.partial import PartialFile
from lawchatd.fetch.plan import PartPlan
from lawchatd.fetch.verify import HASH_CHUNK, Stopped, hash_file, record_of
from lawchatd.hub.client import HubClient, retry_after
from lawchatd.state.store import DownloadRow, Part, Store
from lawchatd.testing.flaky_hub import Faults, FlakyHub, start_flaky_hub

DATA = os.urandom(3 << 20)
KEPT = 1000


# ---- the store: one save is one transaction ------------------------------------------------


async def test_a_save_is_one_transaction_even_with_other_writers(tmp_path: Path):
    store = await Store.open(tmp_path / "db.sqlite3")
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)
    row = DownloadRow("v", "f.gguf", "downloading", total_size=100)
    parts = [Part(0, 50, 10), Part(50, 100, 5)]
    await asyncio.gather(
        *(store.save(row, parts) for _ in range(5)),
        *(store.set_meta("k", str(i)) for i in range(5)),
    )
    await store._db.set_trace_callback(None)
    # Between a save's DELETE of its parts and their INSERT, nobody commits.
    for i, sql in enumerate(statements):
        if sql.startswith("DELETE FROM parts"):
            assert statements[i + 1].startswith("INSERT INTO parts"), statements[i : i + 3]
    assert await store.parts("v") == parts
    await store.close()


async def test_a_failed_save_changes_nothing(tmp_path: Path):
    store = await Store.open(tmp_path / "db.sqlite3")
    row = DownloadRow("v", "f.gguf", "downloading", total_size=100)
    await store.save(row, [Part(0, 100, 40)])
    with pytest.raises(sqlite3.IntegrityError):
        await store.save(row, [Part(0, 50, 1), Part(0, 100, 2)])  # the same start twice
    assert await store.parts("v") == [Part(0, 100, 40)]
    await store.close()


# ---- the partial file: closed only after its threads ---------------------------------------


async def test_aclose_waits_for_a_thread_whose_await_was_cancelled(tmp_path: Path):
    partial = PartialFile(tmp_path / "f.part")
    await partial.open(truncate=True)
    finished = []

    def slow_write(fd: int) -> None:
        time.sleep(0.3)
        os.pwrite(fd, b"late bytes", 0)  # EBADF (or another file!) if fd were closed
        finished.append(True)

    task = asyncio.create_task(partial.run(slow_write))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await partial.aclose()
    assert finished == [True]
    assert (tmp_path / "f.part").read_bytes() == b"late bytes"


# ---- the fetcher against a real server -----------------------------------------------------


async def fetch_with(hub: FlakyHub, tmp_path: Path, **fetcher_args) -> tuple[bytes, Counters]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        link = Link(HubClient(session, hub.url, None), url=hub.cdn_url + "/blob/f.gguf")
        partial = PartialFile(tmp_path / "f.part")
        await partial.open(truncate=True)
        await partial.write([DATA[:KEPT]], 0)  # a resume: every request is ranged
        plan = PartPlan(len(DATA), [Part(0, len(DATA), KEPT)])
        counters = Counters()
        waits: list[float] = []

        async def backoff(delay: float, exc: BaseException, note: str | None) -> None:
            waits.append(delay)

        fetcher = Fetcher(
            link, partial, plan, counters=counters, max_retries=3, backoff_base=0.0,
            backoff=backoff, **fetcher_args,
        )  # fmt: skip
        try:
            await fetcher.fill(plan.claim())  # type: ignore[arg-type]
        finally:
            await partial.aclose()
        counters.waits = waits  # type: ignore[attr-defined]
        return (tmp_path / "f.part").read_bytes(), counters


@pytest.fixture
async def cdn():
    hub = await start_flaky_hub({"f.gguf": DATA}, Faults(seed=3))
    yield hub
    await hub.close()


async def test_the_fetcher_survives_drops_stalls_and_503_without_losing_bytes(cdn, tmp_path):
    for kind in ("drop", "503", "short_206", "drop", "wrong_range", "429"):
        cdn.faults.queue(kind)
    cdn.faults.retry_after = 0
    data, counters = await fetch_with(cdn, tmp_path)
    assert hashlib.sha256(data).digest() == hashlib.sha256(DATA).digest()
    assert counters.retries == 6
    lost = cdn.bytes_served - (len(DATA) - KEPT)
    assert lost <= 4 * (256 << 10), lost  # at most what was in flight at each drop


async def test_ranged_requests_ask_for_identity_and_refuse_a_compressed_206(cdn, tmp_path):
    cdn.faults.queue("gzip_206")
    data, counters = await fetch_with(cdn, tmp_path)
    assert data == DATA and counters.retries == 1
    assert [r.accept_encoding for r in cdn.requests] == ["identity", "identity"]


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def test_retry_after_reads_seconds_dates_and_the_hubs_ratelimit():
    assert retry_after(headers(Retry_After="7")) == 7
    assert retry_after(headers(RateLimit='"resolvers";r=0;t=23')) == 23
    assert retry_after(headers(Retry_After="2", RateLimit='"api";r=0;t=5')) == 5
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= retry_after(headers(Retry_After=later)) <= 61  # type: ignore[operator]
    assert retry_after(headers(Retry_After="soon")) is None
    assert retry_after(headers()) is None


# ---- errors in words -----------------------------------------------------------------------


def test_unexpected_errors_are_sentences_not_taskgroup_texts():
    group = ExceptionGroup(
        "unhandled errors in a TaskGroup", [PermissionError(13, "Permission denied", "/m/f.part")]
    )
    text = in_words(group, unexpected=True)
    assert "TaskGroup" not in text and "Permission denied (/m/f.part)" in text
    db = in_words(sqlite3.OperationalError("attempt to write a readonly database"), unexpected=True)
    assert "state database cannot be written" in db and "writable" in db
    nested = ExceptionGroup(
        "x", [ValueError("v"), ExceptionGroup("y", [DownloadFailed("disk full")])]
    )
    assert "disk full" in in_words(nested, unexpected=True)


# ---- a store that cannot be written --------------------------------------------------------


@contextlib.asynccontextmanager
async def manager_of_nowhere(
    store: Store, spec: ModelSpec, data_dir: Path, seen: list, **settings
) -> AsyncIterator[DownloadManager]:
    """A manager whose hub is a closed port: every download of it ends while resolving."""
    config = Settings(_env_file=None, data_dir=data_dir, **settings)  # type: ignore[call-arg]
    async with aiohttp.ClientSession() as session:
        hub = HubClient(session, "http://127.0.0.1:9", None)
        yield DownloadManager(config, Catalog([spec]), store, hub, seen.append)


async def run_to_its_end(manager: DownloadManager, variant: str, **start) -> str:
    said = await manager.start(variant, **start)
    assert manager._task is not None
    await asyncio.wait({manager._task}, timeout=10)
    return said


async def test_a_read_only_store_ends_the_download_in_an_error_not_downloading(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    await store.close()
    db = await aiosqlite.connect(f"file:{tmp_path / 'db.sqlite3'}?mode=ro", uri=True)
    db.row_factory = aiosqlite.Row
    spec = ModelSpec("v", "o/r", "f.gguf", len(DATA))
    seen = []
    async with manager_of_nowhere(Store(db), spec, tmp_path / "data", seen) as manager:
        await run_to_its_end(manager, "v")
        snap = manager.snapshot()
        assert snap.status == "error", snap
        assert "state database cannot be written" in (snap.error or "")
        assert await manager.cancel() == (False, "No download is running")
        assert seen[-1].status == "error"
    await db.close()


async def test_a_forced_download_does_not_show_the_old_files_size_while_resolving(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    size = len(DATA)
    await store.save(DownloadRow("v", "f.gguf", "completed", total_size=size, downloaded_size=size))
    spec = ModelSpec("v", "o/r", "f.gguf", size)
    seen = []
    async with manager_of_nowhere(store, spec, tmp_path / "data", seen, max_retries=1) as manager:
        assert await run_to_its_end(manager, "v", force=True) == "download_started"
    downloading = [snap for snap in seen if snap.status == "downloading"]
    assert downloading and all(snap.done == 0 for snap in downloading), downloading
    await store.close()


async def test_files_of_one_base_name_in_two_folders_are_two_verified_records(tmp_path: Path):
    # The mirror's downloads are named by their path in the repo (Q4/model.gguf,
    # Q8/model.gguf): keyed by the base name, the second record collided with the first.
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        for folder in ("Q4", "Q8"):
            path = tmp_path / folder / "model.gguf"
            path.parent.mkdir()
            path.write_bytes(folder.encode())
            name = f"{folder}/model.gguf"
            await store.set_verified(name, record_of(name, path, hash_file(path)))
        assert sorted(await store.verified()) == ["Q4/model.gguf", "Q8/model.gguf"]
    finally:
        await store.close()


def test_a_hash_gives_up_when_the_daemon_stops(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * HASH_CHUNK))
    assert hash_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        hash_file(path, stop)


# ---- the daemon's journal: the one writer of a download's row --------------------------------


async def test_the_row_journal_keeps_what_the_engine_gives_it_and_gives_it_back(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        journal = RowJournal(store, DownloadRow("v", "f.gguf", "idle"))
        await journal.begin(100)
        assert journal.row.status == "downloading" and journal.row.started_at
        entry = Entry([Part(0, 50, 20, 10), Part(50, 100, 5)], "boot", "a" * 64, "c" * 40, '"e"')
        await journal.save(entry)
        stored = await store.get("v")
        assert stored is not None and stored.downloaded_size == 25
        kept = (stored.upstream_sha256, stored.commit_sha, stored.cdn_etag, stored.boot_id)
        assert kept == (entry.sha256, entry.commit, entry.etag, entry.boot_id)
        again = RowJournal(store, DownloadRow("v", "f.gguf", "idle"))
        await again.begin(100)
        assert await again.load() == entry  # what a restart resumes from
        transition(again.row, "cancelled")
        await again.write()
        stored = await store.get("v")
        assert stored is not None and (stored.status, stored.phase) == ("cancelled", None)
        assert await store.parts("v") == entry.parts  # a status change keeps the parts
        await forget_partial(store, stored)
        forgotten = await store.get("v")
        assert await store.parts("v") == [] and forgotten and forgotten.downloaded_size == 0
    finally:
        await store.close()
