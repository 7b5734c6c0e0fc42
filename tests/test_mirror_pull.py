"""Pull-through: an office mirror (--upstream) in front of another mirror standing in for the Hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from lawchatd.fetch import FetchOptions
from lawchatd.testing.daemon import Daemon
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.models import REPO, ModelFile, sha256_of
from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import serve

FAST = FetchOptions(connections=2, max_retries=20, retry_backoff=0.1, stall_timeout=2.0)
A = "tiny-a"


@pytest.fixture
async def office(tmp_path: Path, mirror: Mirror) -> AsyncIterator[Mirror]:
    """A pull-through mirror with an empty DIR, its upstream the test Hub (`mirror`)."""
    server = await start_mirror(tmp_path / "office", upstream=mirror.url, fetch_options=FAST)
    yield server
    await server.runner.cleanup()


@pytest.fixture(autouse=True)
def _office_dir(tmp_path: Path) -> None:
    (tmp_path / "office").mkdir()


async def _status(office: Mirror) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{office.url}/_mirror/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def _fetches(office: Mirror, until: Callable[[list], bool]) -> list:
    """The office's fetches in flight, once `until` holds for them (10 s at most)."""
    for _ in range(200):
        fetches = (await _status(office))["fetches"]
        if until(fetches):
            return fetches
        await asyncio.sleep(0.05)
    raise AssertionError(f"fetches never reached the state wanted: {fetches}")


async def _get(url: str) -> tuple[int, bytes, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_two_daemons_share_one_upstream_fetch(
    make_daemon: Callable[..., Daemon],
    mirror: Mirror,
    office: Mirror,
    models: dict[str, ModelFile],
    tmp_path: Path,
) -> None:
    model = models[A]
    mirror.faults.rate = 3_000_000  # about 2 s: both daemons ask while the fetch runs
    daemons = [
        await make_daemon(
            data_dir=tmp_path / f"d{i}", hub=office, LAWCHATD_STALL_TIMEOUT="5"
        ).start()
        for i in range(2)
    ]
    for daemon in daemons:
        status, reply = await daemon.post("/models/download", {"model_variant": A})
        assert status == 200, reply
    fetches = await _fetches(office, bool)
    assert [(f["repo"], f["path"], f["size"]) for f in fetches] == [
        (REPO, model.filename, model.size)
    ]
    for daemon in daemons:
        done = await daemon.wait_done(timeout=60)
        assert done["status"] == "completed", done
        assert sha256_of(daemon.data_dir / "models" / model.filename) == model.sha256
    # The upstream sent the file once, for both daemons.
    assert mirror.cdn_bytes() == model.size
    kept = tmp_path / "office" / REPO / model.filename
    assert sha256_of(kept) == model.sha256
    status = await _status(office)
    assert status["fetches"] == []
    assert {"repo": REPO, "path": model.filename, "size": model.size, "lfs": True} in status[
        "files"
    ]


async def test_a_filled_mirror_serves_without_its_upstream(
    mirror: Mirror, office: Mirror, models: dict[str, ModelFile], hub_root: Path
) -> None:
    model = models["tiny-small"]
    url = f"{office.url}/{REPO}/resolve/main/{model.filename}"
    status, body, _ = await _get(url)
    assert status == 200 and len(body) == model.size
    await _fetches(office, lambda f: not f)  # verified and moved into DIR after the last byte
    served = mirror.cdn_bytes()
    await mirror.runner.cleanup()  # the internet goes away
    status, again, headers = await _get(url)
    assert status == 200 and again == body and mirror.cdn_bytes() == served
    assert headers["X-Linked-Etag"] == f'"{model.sha256}"'
    # The upstream's tree as recorded while it answered: the whole repo, not just DIR's part.
    status, info, _ = await _get(f"{office.url}/api/models/{REPO}")
    assert status == 200 and headers["X-Repo-Commit"] == json.loads(info)["sha"]
    listed = sorted(s["rfilename"] for s in json.loads(info)["siblings"])
    assert listed == sorted(p.name for p in (hub_root / REPO).iterdir() if p.suffix == ".gguf")


async def test_the_upstream_dying_mid_fetch_resumes(
    tmp_path: Path, hub_root: Path, models: dict[str, ModelFile]
) -> None:
    model = models["big"]
    port = free_port()
    upstream = await start_mirror(hub_root, port=port)
    office = await start_mirror(tmp_path / "office", upstream=upstream.url, fetch_options=FAST)
    try:
        upstream.faults.rate = 4_000_000
        client = asyncio.create_task(_get(f"{office.url}/{REPO}/resolve/main/{model.filename}"))
        await _fetches(office, lambda f: bool(f) and f[0]["downloaded"] >= 6_000_000)
        before = upstream.cdn_bytes()
        await upstream.runner.cleanup()  # the upstream dies mid-fetch...
        await asyncio.sleep(0.5)
        upstream = await start_mirror(hub_root, port=port)  # ...and comes back
        status, body, _ = await asyncio.wait_for(client, 60)
        assert status == 200 and len(body) == model.size
        await _fetches(office, lambda f: not f)
        kept = tmp_path / "office" / REPO / model.filename
        assert sha256_of(kept) == model.sha256
        # Resumed: the new upstream sent only what the first one had not.
        assert upstream.cdn_bytes() <= model.size - before + 8 * (1 << 20)
        assert upstream.cdn_bytes() < model.size
    finally:
        await office.runner.cleanup()
        await upstream.runner.cleanup()


async def test_an_unreachable_upstream_is_a_clear_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    office = await start_mirror(tmp_path / "office", upstream=dead, fetch_options=FAST)
    try:
        # Never listed while it answered: the mirror cannot say what the repo holds.
        status, body, headers = await _get(f"{office.url}/{REPO}/resolve/main/x.gguf")
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert f"the upstream {dead} is unreachable" in headers["X-Error-Message"]
        assert b"has no record of" in body
        status, body, headers = await _get(f"{office.url}/api/models/{REPO}")
        assert status == 503 and "unreachable" in headers["X-Error-Message"]
    finally:
        await office.runner.cleanup()


async def test_upstream_refusals_are_passed_on(mirror: Mirror, office: Mirror) -> None:
    status, _, headers = await _get(f"{office.url}/{REPO}/resolve/main/none.gguf")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    status, _, headers = await _get(f"{office.url}/{REPO}/resolve/v9/tiny-a.gguf")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    mirror.faults.gated = True
    status, _, headers = await _get(f"{office.url}/{REPO}/resolve/main/tiny-a.gguf")
    assert (status, headers["X-Error-Code"]) == (401, "GatedRepo")


async def test_a_link_out_of_dir_is_never_filled(
    tmp_path: Path, mirror: Mirror, office: Mirror
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "office" / REPO.split("/")[0]).symlink_to(outside)
    status, _, _ = await _get(f"{office.url}/{REPO}/resolve/main/tiny-small.gguf")
    assert status == 404
    assert list(outside.iterdir()) == [] and mirror.cdn_bytes() == 0


async def test_the_cli_fills_from_a_gated_upstream_with_its_token(
    tmp_path: Path, hub_root: Path, models: dict[str, ModelFile]
) -> None:
    from lawchatd.testing.models import HF_TOKEN

    upstream = await start_mirror(hub_root, token=HF_TOKEN)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAWCHATD_", "HF_"))}
    env["LAWCHATD_MIRROR_UPSTREAM_TOKEN"] = HF_TOKEN  # from the environment, not `ps`
    argv = [sys.executable, "-m", "lawchatd", "mirror", str(tmp_path / "office")]
    argv += ["--port", str(port), "--upstream", upstream.url]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    try:
        model = models["tiny-small"]
        url = f"http://127.0.0.1:{port}/{REPO}/resolve/main/{model.filename}"
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                status, body, _ = await _get(url)
                break
            await asyncio.sleep(0.1)
        assert status == 200 and len(body) == model.size
        resolved = [r for r in upstream.stats.requests if "/resolve/" in r.path]
        assert resolved and all(r.authorization for r in resolved)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        await upstream.runner.cleanup()
    assert HF_TOKEN.encode() not in err


def test_the_cli_refuses_an_upstream_that_is_not_http(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "lawchatd", "mirror", str(tmp_path), "--upstream", "ftp://hub"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "must start with http(s)://" in done.stderr
    argv = [sys.executable, "-m", "lawchatd", "mirror", str(tmp_path), "--client-wait", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "--client-wait '0' must be seconds" in done.stderr


async def test_bytes_that_fail_the_sha256_never_enter_dir(
    tmp_path: Path, mirror: Mirror, office: Mirror, models: dict[str, ModelFile]
) -> None:
    model = models["tiny-small"]
    mirror.faults.corrupt_at = 1000  # the upstream flips a byte in every response
    status, body, _ = await _get(f"{office.url}/{REPO}/resolve/main/{model.filename}")
    assert status == 200 or len(body) < model.size  # streamed as it came, or cut short
    await _fetches(office, lambda f: not f)
    assert not (tmp_path / "office" / REPO / model.filename).exists()
    mirror.faults.corrupt_at = None  # the next request fetches again, and this time it is good
    status, body, _ = await _get(f"{office.url}/{REPO}/resolve/main/{model.filename}")
    await _fetches(office, lambda f: not f)
    assert sha256_of(tmp_path / "office" / REPO / model.filename) == model.sha256


async def test_pull_through_from_an_upstream_that_answers_like_huggingface_co(
    tmp_path: Path, hub_root: Path, models: dict[str, ModelFile]
) -> None:

    from lawchatd.testing.models import HF_TOKEN
    from tests.hub_like import COMMIT, HubLike

    model = models["tiny-small"]
    files = tmp_path / "hub-like"
    files.mkdir()
    shutil.copy(hub_root / REPO / model.filename, files / model.filename)
    (files / "README.md").write_text("# test\n")
    port = free_port()
    hub = HubLike(files, REPO, port)
    _url, runner = await serve(hub.app(), port)
    office = await start_mirror(
        tmp_path / "office",
        upstream=f"http://127.0.0.1:{port}",
        upstream_token=HF_TOKEN,
        fetch_options=FAST,
    )
    try:
        status, body, headers = await _get(f"{office.url}/{REPO}/resolve/main/{model.filename}")
        assert status == 200 and len(body) == model.size
        assert headers["X-Repo-Commit"] == COMMIT
        status, readme, headers = await _get(f"{office.url}/{REPO}/resolve/{COMMIT}/README.md")
        assert (status, readme, headers["X-Repo-Commit"]) == (200, b"# test\n", COMMIT)
        await _fetches(office, lambda f: not f)
        assert sha256_of(tmp_path / "office" / REPO / model.filename) == model.sha256
        assert hub.resolves and all(token for _, token in hub.resolves)
        assert hub.cdn_authorizations == []  # the token went to the Hub, never to the CDN
    finally:
        await office.runner.cleanup()
        await runner.cleanup()


async def test_a_daemon_behind_an_office_with_no_upstream_says_so(
    tmp_path: Path, make_daemon: Callable[..., Daemon]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    office = await start_mirror(tmp_path / "office", upstream=dead, fetch_options=FAST)
    try:
        daemon = await make_daemon(hub=office).start()
        status, reply = await daemon.post("/models/download", {"model_variant": A})
        assert status == 200, reply
        # A 503 with Retry-After: the daemon waits and says why, in the mirror's words.
        said = await daemon.wait_progress(lambda p: "is unreachable" in (p.get("message") or ""))
        assert f"the upstream {dead} is unreachable" in said["message"], said
    finally:
        await office.runner.cleanup()


async def test_parallel_ranges_are_served_from_a_fetch_in_flight(
    make_daemon: Callable[..., Daemon],
    mirror: Mirror,
    office: Mirror,
    models: dict[str, ModelFile],
) -> None:
    model = models["big"]  # 40 MB: the daemon's 4 connections ask for ranges all over the file
    mirror.faults.rate = 8_000_000  # per upstream connection: the office is still fetching
    daemon = await make_daemon(
        hub=office, LAWCHATD_CONNECTIONS="4", LAWCHATD_STALL_TIMEOUT="5"
    ).start()
    status, reply = await daemon.post("/models/download", {"model_variant": "big"})
    assert status == 200, reply
    assert await _fetches(office, bool)
    done = await daemon.wait_done(timeout=60)
    assert done["status"] == "completed", done
    assert sha256_of(daemon.data_dir / "models" / model.filename) == model.sha256
    ranged = [r for r in office.stats.requests if r.path.startswith("/cdn/") and r.range]
    assert len(ranged) >= 3, daemon.log()  # several ranges were served while the office fetched
    assert "retry" not in daemon.log()  # no connection waited long enough to look stalled
    await _fetches(office, lambda f: not f)
    # A part split mid-flight may cost the bytes already on the wire, never a second fetch.
    assert model.size <= mirror.cdn_bytes() < model.size + (4 << 20)


async def test_a_fetch_cut_by_a_mirror_restart_resumes(
    tmp_path: Path, mirror: Mirror, models: dict[str, ModelFile]
) -> None:
    model = models["big"]
    url_path = f"/{REPO}/resolve/main/{model.filename}"
    office = await start_mirror(tmp_path / "office", upstream=mirror.url, fetch_options=FAST)
    mirror.faults.rate = 4_000_000
    client = asyncio.create_task(_get(office.url + url_path))
    await _fetches(office, lambda f: bool(f) and f[0]["downloaded"] >= 8_000_000)
    await office.runner.cleanup()  # the office mirror stops mid-fetch (partial and parts kept)
    with contextlib.suppress(aiohttp.ClientError):
        await client
    mirror.faults.rate = None
    await mirror.fresh_count()
    office = await start_mirror(tmp_path / "office", upstream=mirror.url, fetch_options=FAST)
    try:
        status, body, _ = await _get(office.url + url_path)
        assert status == 200 and len(body) == model.size
        await _fetches(office, lambda f: not f)
        assert sha256_of(tmp_path / "office" / REPO / model.filename) == model.sha256
        assert mirror.cdn_bytes() <= model.size - 8_000_000 + (4 << 20)  # not from zero
    finally:
        await office.runner.cleanup()


async def test_an_upstream_commit_gets_its_own_bytes_and_works_offline(tmp_path: Path) -> None:
    from lawchatd.testing.models import make_big_gguf

    hub = tmp_path / "hub"
    (hub / REPO).mkdir(parents=True)
    path = make_big_gguf(hub / REPO / "moving.gguf", 1 << 20)
    upstream = await start_mirror(hub)
    office = await start_mirror(tmp_path / "office", upstream=upstream.url, fetch_options=FAST)
    resolve = f"{office.url}/{REPO}/resolve"
    try:
        assert (await _get(f"{resolve}/main/moving.gguf"))[1] == path.read_bytes()
        await _fetches(office, lambda f: not f)
        make_big_gguf(path, 1 << 20)  # the upstream publishes a new version
        status, info, _ = await _get(f"{office.url}/api/models/{REPO}")
        commit = json.loads(info)["sha"]  # the upstream's new commit, through the office
        status, body, headers = await _get(f"{resolve}/{commit}/moving.gguf")
        assert (status, headers["X-Repo-Commit"]) == (200, commit)
        assert body == path.read_bytes()  # the new bytes, not DIR's older copy
        await _fetches(office, lambda f: not f)
        await upstream.runner.cleanup()  # offline: the commit it handed out still resolves...
        assert (await _get(f"{resolve}/{commit}/moving.gguf"))[1] == path.read_bytes()
        assert (await _get(f"{resolve}/{'e' * 40}/moving.gguf"))[0] == 503  # never recorded
        await office.runner.cleanup()  # ...also after a restart of the office
        office = await start_mirror(tmp_path / "office", upstream=upstream.url)
        resolve = f"{office.url}/{REPO}/resolve"
        assert (await _get(f"{resolve}/{commit}/moving.gguf"))[1] == path.read_bytes()
    finally:
        await office.runner.cleanup()
        await upstream.runner.cleanup()


async def test_only_the_repos_allowed_are_filled(
    tmp_path: Path, mirror: Mirror, models: dict[str, ModelFile]
) -> None:
    # An open pull-through on a LAN would let anyone fill the disk with any repo of the Hub.
    model = models["tiny-small"]
    office = await start_mirror(
        tmp_path / "office", upstream=mirror.url, upstream_repos=["TheBloke/law-chat-*"]
    )
    try:
        status, _, headers = await _get(f"{office.url}/{REPO}/resolve/main/{model.filename}")
        assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")
        assert (await _get(f"{office.url}/api/models/{REPO}"))[0] == 404
        assert mirror.stats.requests == []  # the upstream was never asked
    finally:
        await office.runner.cleanup()
    office = await start_mirror(
        tmp_path / "office", upstream=mirror.url, upstream_repos=["test-org/law-chat-*"]
    )
    try:
        status, body, _ = await _get(f"{office.url}/{REPO}/resolve/main/{model.filename}")
        assert status == 200 and len(body) == model.size
    finally:
        await office.runner.cleanup()


async def test_a_large_file_that_is_not_gguf_is_fetched_in_parallel_and_verified(
    mirror: Mirror, office: Mirror, hub_root: Path, tmp_path: Path
) -> None:
    weights = hub_root / REPO / "weights.safetensors"  # LFS by the default patterns
    weights.write_bytes(os.urandom(12 << 20))  # parts of 4 MB at the least
    try:
        await mirror.fresh_count()
        status, body, _ = await _get(f"{office.url}/{REPO}/resolve/main/{weights.name}")
        assert status == 200 and body == weights.read_bytes()
        await _fetches(office, lambda f: not f)
        kept = tmp_path / "office" / REPO / weights.name
        assert sha256_of(kept) == sha256_of(weights)
        # The engine's connections (FAST: 2), each asking for its own range of the file.
        ranged = {r.range for r in mirror.stats.requests if r.path.startswith("/cdn/") and r.range}
        assert len(ranged) >= 2, mirror.stats.requests
    finally:
        weights.unlink()


async def test_small_files_come_through_the_engine_too(tmp_path: Path) -> None:
    # An empty file and one in a subfolder: no LFS sha256, checked by their git blob id.
    hub = tmp_path / "hub"
    (hub / REPO / "sub").mkdir(parents=True)
    (hub / REPO / "empty.txt").write_bytes(b"")
    (hub / REPO / "sub" / "config.json").write_text('{"a": 1}')
    upstream = await start_mirror(hub)
    office = await start_mirror(tmp_path / "office", upstream=upstream.url, fetch_options=FAST)
    try:
        for name, want in (("empty.txt", b""), ("sub/config.json", b'{"a": 1}')):
            status, body, headers = await _get(f"{office.url}/{REPO}/resolve/main/{name}")
            assert (status, body) == (200, want)
            assert "X-Linked-Etag" not in headers
            assert (tmp_path / "office" / REPO / name).read_bytes() == want
        assert (await _status(office))["fetches"] == []
    finally:
        await office.runner.cleanup()
        await upstream.runner.cleanup()
