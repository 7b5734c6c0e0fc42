"""The Hub-compatible mirror, driven over real loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from lawchatd.mirror import create_mirror_app, run_mirror
from lawchatd.mirror.signing import Signer
from lawchatd.testing import mirror_faults
from lawchatd.testing.mirror_faults import FAULTS, STATS, Faults, MirrorStats
from lawchatd.testing.servers import serve, served

SIZE = 300_000
FILE = "law-chat.Q4_0.gguf"
TOKEN = "hf_secret"


@dataclass
class Mirror:
    base: str  # e.g. http://127.0.0.1:PORT
    root: Path
    path: Path  # ROOT/TheBloke/law-chat-GGUF/FILE
    data: bytes
    faults: Faults
    stats: MirrorStats

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def resolve_url(self, name: str = FILE, revision: str = "main") -> str:
        return f"{self.base}/TheBloke/law-chat-GGUF/resolve/{revision}/{name}"


StartMirror = Callable[..., Awaitable[Mirror]]


@pytest.fixture
async def start_mirror(tmp_path: Path) -> AsyncIterator[StartMirror]:
    """Start the real app on a loopback port; keyword arguments go to create_mirror_app."""
    runners: list[web.AppRunner] = []
    root = tmp_path / "root"
    repo = root / "TheBloke" / "law-chat-GGUF"
    repo.mkdir(parents=True)
    data = os.urandom(SIZE)
    (repo / FILE).write_bytes(data)
    (repo / "README.md").write_text("# law-chat\n")
    (repo / ".gitattributes").write_text("*.gguf filter=lfs\n")
    (tmp_path / "secret.txt").write_text("top secret")

    async def start(*, control: bool = False, **options: object) -> Mirror:
        app = mirror_faults.install(create_mirror_app(root, **options), control=control)  # type: ignore[arg-type]
        url, runner = await serve(app)
        runners.append(runner)
        return Mirror(url, root, repo / FILE, data, app[FAULTS], app[STATS])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def mirror(start_mirror: StartMirror) -> Mirror:
    return await start_mirror()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def resolve(
    http: aiohttp.ClientSession, url: str, method: str = "HEAD", **kwargs: object
) -> aiohttp.ClientResponse:
    async with http.request(method, url, allow_redirects=False, **kwargs) as resp:  # type: ignore[arg-type]
        await resp.read()
        return resp


async def cdn_url(http: aiohttp.ClientSession, mirror: Mirror) -> str:
    return (await resolve(http, mirror.resolve_url())).headers["Location"]


async def fetch(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


async def read_until_broken(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The body as far as it arrives, and whether the connection broke early."""
    got = bytearray()
    try:
        async for chunk in resp.content.iter_any():
            got += chunk
    except aiohttp.ClientPayloadError:
        return bytes(got), True
    return bytes(got), False


# --- resolve -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_resolve_reports_commit_sha256_size_and_cdn_location(
    mirror: Mirror, http: aiohttp.ClientSession, method: str
) -> None:
    resp = await resolve(http, mirror.resolve_url(), method)
    assert resp.status == 302
    h = resp.headers
    assert re.fullmatch(r"[0-9a-f]{40}", h["X-Repo-Commit"])
    assert h["X-Linked-Etag"] == f'"{mirror.sha256}"' == h["ETag"]
    assert h["X-Linked-Size"] == str(SIZE)
    assert h["Content-Length"] == "0"
    cdn = f"{mirror.base}/cdn/TheBloke/law-chat-GGUF/{mirror.sha256}/{FILE}"
    assert h["Location"] == f"{cdn}?commit={h['X-Repo-Commit']}"


async def test_commit_is_stable_accepted_as_revision_and_follows_content(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    commit = (await resolve(http, mirror.resolve_url())).headers["X-Repo-Commit"]
    again = await resolve(http, mirror.resolve_url(revision=commit))
    assert again.status == 302 and again.headers["X-Repo-Commit"] == commit
    (mirror.path.parent / "new.gguf").write_bytes(b"x")
    assert (await resolve(http, mirror.resolve_url())).headers["X-Repo-Commit"] != commit


async def test_a_static_commit_comes_from_the_content_not_the_times(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    # The same files give the same commit, whatever their times (a copy without -a, a touch).
    commit = (await resolve(http, mirror.resolve_url())).headers["X-Repo-Commit"]
    os.utime(mirror.path, (1_000_000, 1_000_000))
    assert (await resolve(http, mirror.resolve_url())).headers["X-Repo-Commit"] == commit
    mirror.path.write_bytes(mirror.data[:-1] + bytes([mirror.data[-1] ^ 1]))  # one bit
    assert (await resolve(http, mirror.resolve_url())).headers["X-Repo-Commit"] != commit
    mirror.path.write_bytes(mirror.data)  # back: the commit it had
    assert (await resolve(http, mirror.resolve_url())).headers["X-Repo-Commit"] == commit


async def test_sidecar_sha256_is_used_without_hashing(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    mirror.path.with_name(FILE + ".sha256").write_text(f"{'ab' * 32}  {FILE}\n")
    assert (await resolve(http, mirror.resolve_url())).headers["X-Linked-Etag"] == f'"{"ab" * 32}"'


async def test_missing_entry_and_repo_are_404_with_error_codes(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    missing = await resolve(http, mirror.resolve_url("nope.gguf"), "GET")
    assert (missing.status, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
    async with http.get(mirror.resolve_url("nope.gguf"), allow_redirects=False) as resp:
        assert await resp.json() == {"error": "Entry not found"}
    no_repo = await resolve(http, f"{mirror.base}/TheBloke/other/resolve/main/{FILE}")
    assert (no_repo.status, no_repo.headers["X-Error-Code"]) == (404, "RepoNotFound")
    hidden = await resolve(http, mirror.resolve_url(".gitattributes"))
    assert hidden.status == 404


@pytest.mark.parametrize(
    "raw",
    [
        "/TheBloke/law-chat-GGUF/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/TheBloke/law-chat-GGUF/resolve/main/..%2F..%2F..%2Fsecret.txt",
        "/TheBloke/law-chat-GGUF/resolve/main/%2F{tmp}/secret.txt",
        "/TheBloke/law-chat-GGUF/resolve/main/..%5C..%5C..%5Csecret.txt",
        "/TheBloke/%2e%2e/resolve/main/secret.txt",
        "/%2e%2e/root/resolve/main/secret.txt",
        "/TheBloke/law-chat-GGUF/resolve/main/../../../secret.txt",
    ],
)
async def test_path_traversal_is_refused(
    mirror: Mirror, http: aiohttp.ClientSession, raw: str
) -> None:
    url = URL(mirror.base + raw.format(tmp=str(mirror.root.parent).strip("/")), encoded=True)
    async with http.get(url, allow_redirects=True) as resp:
        assert resp.status in (400, 404)
        assert b"top secret" not in await resp.read()


# --- CDN ---------------------------------------------------------------------------------------


async def test_cdn_serves_bytes_with_its_own_etag(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await fetch(http, await cdn_url(http, mirror))
    assert status == 200 and body == mirror.data
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Length"] == str(SIZE)
    assert mirror.sha256 not in headers["ETag"]
    async with http.head(await cdn_url(http, mirror)) as resp:
        assert resp.headers["Content-Length"] == str(SIZE) and await resp.read() == b""


async def test_following_the_redirect_gets_the_file(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await fetch(http, mirror.resolve_url())
    assert status == 200 and body == mirror.data


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=1000-", 1000, SIZE - 1),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-500", SIZE - 500, SIZE - 1),
        (f"bytes=5-{SIZE * 2}", 5, SIZE - 1),
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
    ],
)
async def test_single_ranges_get_206(
    mirror: Mirror, http: aiohttp.ClientSession, header: str, start: int, end: int
) -> None:
    status, body, headers = await fetch(http, await cdn_url(http, mirror), Range=header)
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert body == mirror.data[start : end + 1]


async def test_if_range_matches_only_the_cdn_etag(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    url = await cdn_url(http, mirror)
    etag = (await fetch(http, url))[2]["ETag"]
    status, body, _ = await fetch(http, url, Range="bytes=10-", **{"If-Range": etag})
    assert status == 206 and body == mirror.data[10:]
    status, body, _ = await fetch(
        http, url, Range="bytes=10-", **{"If-Range": f'"{mirror.sha256}"'}
    )
    assert status == 200 and body == mirror.data


async def test_unsatisfiable_range_is_416(mirror: Mirror, http: aiohttp.ClientSession) -> None:
    status, _, headers = await fetch(http, await cdn_url(http, mirror), Range=f"bytes={SIZE}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{SIZE}"


async def test_cdn_404_when_sha256_is_not_the_current_one(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    url = await cdn_url(http, mirror)
    assert (await fetch(http, url.replace(mirror.sha256, "0" * 64)))[0] == 404
    mirror.path.write_bytes(os.urandom(SIZE))  # the upstream file changed after resolve
    assert (await fetch(http, url))[0] == 404


async def test_cdn_requests_reuse_the_repo_scan_until_the_repo_changes(
    mirror: Mirror, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon sends a /cdn/ request per part and per retry: none of them walks the repo again.
    from lawchatd.mirror import index
    from lawchatd.mirror.repo import Repo

    monkeypatch.setattr(index, "RACY_NS", 0)  # the files were written a moment ago
    scans: list[Path] = []
    real_scan = Repo.scan
    monkeypatch.setattr(Repo, "scan", lambda root, d: scans.append(d) or real_scan(root, d))
    url = await cdn_url(http, mirror)
    for start in range(0, SIZE, SIZE // 4):
        status, _, _ = await fetch(http, url, Range=f"bytes={start}-{start + 9}")
        assert status == 206
    assert len(scans) == 1
    time.sleep(0.01)  # a new mtime for the folder, whatever the clock's tick
    (mirror.path.parent / "new.gguf").write_bytes(b"x")
    assert (await resolve(http, mirror.resolve_url("new.gguf"))).status == 302
    assert len(scans) == 2


# --- tree and auth -----------------------------------------------------------------------------


async def test_tree_lists_files_like_the_hub(mirror: Mirror, http: aiohttp.ClientSession) -> None:
    mirror.path.with_name("README.md.sha256").write_text("ignored\n")
    async with http.get(f"{mirror.base}/api/models/TheBloke/law-chat-GGUF/tree/main") as resp:
        items = {item["path"]: item for item in await resp.json()}
    assert set(items) == {FILE, "README.md"}
    item = items[FILE]
    assert item["type"] == "file" and item["size"] == SIZE
    assert re.fullmatch(r"[0-9a-f]{40}", item["oid"])
    assert item["lfs"]["oid"] == mirror.sha256 and item["lfs"]["size"] == SIZE
    assert item["lfs"]["pointerSize"] > 100
    async with http.get(f"{mirror.base}/api/models/TheBloke/none/tree/main") as resp:
        assert resp.status == 404 and resp.headers["X-Error-Code"] == "RepoNotFound"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", TOKEN])
async def test_token_guards_resolve_and_tree(
    start_mirror: StartMirror, http: aiohttp.ClientSession, auth: str | None
) -> None:
    mirror = await start_mirror(token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    headers = (
        {} if auth is None else {"Authorization": auth if auth != TOKEN else good["Authorization"]}
    )
    api = f"{mirror.base}/api/models/TheBloke/law-chat-GGUF"
    urls = [(mirror.resolve_url(), 302), (api + "/tree/main", 200), (api, 200)]
    urls.append((f"{mirror.base}/_mirror/status", 200))
    for url, ok in urls:
        resp = await resolve(http, url, "GET", headers=headers)
        if auth == TOKEN:
            assert resp.status == ok
        else:
            assert (resp.status, resp.headers["X-Error-Code"]) == (401, "GatedRepo")


async def test_cdn_urls_are_presigned_for_an_hour_with_a_token(
    start_mirror: StartMirror, http: aiohttp.ClientSession
) -> None:
    # Issue 9 item 5: with --token, /cdn/ answered anyone. Now it needs the token or the
    # presigned query resolve hands out (expiring, like the Hub's X-Amz-Expires=3600).
    mirror = await start_mirror(token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    location = URL((await resolve(http, mirror.resolve_url(), headers=good)).headers["Location"])
    assert TOKEN not in str(location)
    expires = int(location.query["Expires"])
    assert 3500 < expires - time.time() <= 3600
    assert (await fetch(http, str(location)))[1] == mirror.data
    bare = location.with_query(None)
    assert (await fetch(http, str(bare)))[0] == 403
    assert (await fetch(http, str(bare), Authorization=f"Bearer {TOKEN}"))[0] == 200
    assert (await fetch(http, str(bare), Authorization="Bearer wrong"))[0] == 403
    forged = location.update_query(Signature="0" * 64)
    assert (await fetch(http, str(forged)))[0] == 403
    longer = location.update_query(Expires=str(expires + 3600))
    assert (await fetch(http, str(longer)))[0] == 403
    old = Signer(TOKEN).query(location.path, now=time.time() - 7200)
    assert (await fetch(http, f"{bare}?{old}"))[0] == 403
    other = f"{mirror.base}/cdn/TheBloke/law-chat-GGUF/{'0' * 64}/{FILE}?{location.query_string}"
    assert (await fetch(http, other))[0] == 403  # a signature covers one file only


def _link_outside(mirror: Mirror) -> None:
    """What an attacker (or a careless copy) leaves in DIR: links to places outside it."""
    outside = mirror.root.parent / "secret.txt"
    os.symlink(outside, mirror.path.with_name("secret.gguf"))
    os.symlink(outside, mirror.path.with_name("secret.txt"))
    os.symlink(mirror.root.parent, mirror.root / "TheBloke" / "etc-link")
    os.symlink(mirror.root.parent, mirror.path.with_name("up"))
    os.symlink(mirror.path, mirror.path.with_name("alias.gguf"))  # inside DIR: fine


@pytest.mark.parametrize("path", ["secret.gguf", "secret.txt", "up/secret.txt"])
async def test_symlinks_out_of_dir_are_never_served(
    mirror: Mirror, http: aiohttp.ClientSession, path: str
) -> None:
    _link_outside(mirror)
    for url in (
        mirror.resolve_url(path),
        f"{mirror.base}/TheBloke/etc-link/resolve/main/secret.txt",
        f"{mirror.base}/cdn/TheBloke/law-chat-GGUF/{hashlib.sha256(b'top secret').hexdigest()}/{path}",
        f"{mirror.base}/api/models/TheBloke/etc-link",
    ):
        async with http.get(url) as resp:
            assert resp.status == 404, url
            assert b"top secret" not in await resp.read()
    async with http.get(
        f"{mirror.base}/api/models/TheBloke/law-chat-GGUF/tree/main?recursive=1"
    ) as resp:
        listed = {item["path"] for item in await resp.json()}
    assert listed == {FILE, "README.md", "alias.gguf"}
    assert (await fetch(http, mirror.resolve_url("alias.gguf")))[1] == mirror.data


def test_a_production_mirror_keeps_no_per_request_state(tmp_path: Path) -> None:
    # Issue 9 item 5: every request used to be appended to a list forever.
    app = create_mirror_app(tmp_path)
    assert not app.on_response_prepare and FAULTS not in app and STATS not in app
    assert all(not r.resource.canonical.startswith("/_mirror/f") for r in app.router.routes())


async def test_gated_fault_refuses_even_the_right_token(
    start_mirror: StartMirror, http: aiohttp.ClientSession
) -> None:
    mirror = await start_mirror(token=TOKEN)
    mirror.faults.gated = True
    resp = await resolve(http, mirror.resolve_url(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert (resp.status, resp.headers["X-Error-Code"]) == (401, "GatedRepo")


async def test_cdn_base_points_at_another_host(
    start_mirror: StartMirror, http: aiohttp.ClientSession
) -> None:
    probe = await start_mirror()
    port = URL(probe.base).port
    mirror = await start_mirror(cdn_base=f"http://localhost:{port}/")
    location = (await resolve(http, mirror.resolve_url())).headers["Location"]
    assert location.startswith(f"http://localhost:{port}/cdn/")
    assert (await fetch(http, location.replace("localhost", "127.0.0.1")))[1] == probe.data


# --- faults ------------------------------------------------------------------------------------


async def test_drop_breaks_the_connection_after_n_bytes_then_disarms(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    url = await cdn_url(http, mirror)
    mirror.faults.drop_after = 5000
    async with http.get(url) as resp:
        body, broken = await read_until_broken(resp)
    assert broken and body == mirror.data[:5000]
    assert mirror.faults.drop_after is None
    assert (await fetch(http, url))[1] == mirror.data


async def test_drop_forever_applies_to_ranged_responses_too(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    url = await cdn_url(http, mirror)
    mirror.faults.drop_after, mirror.faults.drop_times = 0, None
    for _ in range(2):
        async with http.get(url, headers={"Range": "bytes=100-"}) as resp:
            assert resp.status == 206
            assert await read_until_broken(resp) == (b"", True)


async def test_503_for_the_next_n_requests(mirror: Mirror, http: aiohttp.ClientSession) -> None:
    url = await cdn_url(http, mirror)
    mirror.faults.status_503 = 3
    for _ in range(2):
        resp = await resolve(http, mirror.resolve_url())
        assert (resp.status, resp.headers["Retry-After"]) == (503, "0")
    assert (await fetch(http, url))[0] == 503
    assert (await resolve(http, mirror.resolve_url())).status == 302


async def test_stall_sends_nothing_for_a_while(mirror: Mirror, http: aiohttp.ClientSession) -> None:
    url = await cdn_url(http, mirror)
    mirror.faults.stall_after, mirror.faults.stall_seconds = 1000, 0.4
    async with http.get(url) as resp:
        assert await resp.content.readexactly(1000) == mirror.data[:1000]
        started = time.monotonic()
        rest = await resp.content.readexactly(1)
        waited = time.monotonic() - started
        rest += await resp.read()
    assert waited >= 0.35
    assert mirror.data[:1000] + rest == mirror.data


async def test_sha256_override_changes_only_what_resolve_reports(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    mirror.faults.sha256_override = "f" * 64
    resp = await resolve(http, mirror.resolve_url())
    assert resp.headers["X-Linked-Etag"] == f'"{"f" * 64}"'
    assert (await fetch(http, resp.headers["Location"]))[1] == mirror.data


async def test_corrupt_flips_one_byte_in_every_covering_response(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    url = await cdn_url(http, mirror)
    mirror.faults.corrupt_at = 200_000
    body = (await fetch(http, url))[1]
    assert [i for i in range(SIZE) if body[i] != mirror.data[i]] == [200_000]
    assert body[200_000] == mirror.data[200_000] ^ 0xFF
    tail = (await fetch(http, url, Range="bytes=199999-200000"))[1]
    assert tail == bytes([mirror.data[199_999], mirror.data[200_000] ^ 0xFF])
    assert (await fetch(http, url, Range="bytes=0-999"))[1] == mirror.data[:1000]


async def test_rate_limits_a_connection(mirror: Mirror, http: aiohttp.ClientSession) -> None:
    url = await cdn_url(http, mirror)
    mirror.faults.rate = 1_000_000
    started = time.monotonic()
    assert (await fetch(http, url))[1] == mirror.data
    assert 0.25 <= time.monotonic() - started < 2.0  # 300 kB at 1 MB/s


async def test_ignore_range_sends_the_whole_file(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    mirror.faults.ignore_range = True
    status, body, headers = await fetch(http, await cdn_url(http, mirror), Range="bytes=100-")
    assert status == 200 and body == mirror.data and "Content-Range" not in headers


def test_faults_update_validates_and_reset_restores_defaults() -> None:
    faults = Faults()
    faults.update({"drop_after": 10, "stall_seconds": 1, "rate": None, "gated": True})
    assert (faults.drop_after, faults.stall_seconds, faults.gated) == (10, 1.0, True)
    for bad in ({"nope": 1}, {"drop_after": "10"}, {"gated": 1}, {"status_503": True}):
        with pytest.raises(ValueError):
            faults.update(bad)
    faults.reset()
    assert faults == Faults()


# --- stats and control -------------------------------------------------------------------------


async def test_stats_record_requests_and_bytes(mirror: Mirror, http: aiohttp.ClientSession) -> None:
    url = await cdn_url(http, mirror)
    await fetch(http, url, Range="bytes=0-99", Authorization="Bearer x", **{"If-Range": '"e"'})
    await fetch(http, url, Range="bytes=0-99")
    assert mirror.stats.bytes_served == SIZE + 100
    head, full, ranged = mirror.stats.requests
    assert (head.method, head.status, head.authorization) == ("HEAD", 302, False)
    assert (full.range, full.if_range, full.status, full.authorization) == (
        "bytes=0-99",
        '"e"',
        200,
        True,
    )
    assert (ranged.status, ranged.host) == (206, URL(mirror.base).authority)
    mirror.stats.reset()
    assert mirror.stats == MirrorStats()


async def test_control_endpoints(start_mirror: StartMirror, http: aiohttp.ClientSession) -> None:
    mirror = await start_mirror(control=True)
    async with http.post(f"{mirror.base}/_mirror/faults", json={"status_503": 1}) as resp:
        assert resp.status == 200 and (await resp.json())["status_503"] == 1
    assert mirror.faults.status_503 == 1
    async with http.post(f"{mirror.base}/_mirror/faults", json={"bogus": 1}) as resp:
        assert resp.status == 400
    assert (await resolve(http, mirror.resolve_url())).status == 503
    async with http.get(f"{mirror.base}/_mirror/stats") as resp:
        stats = await resp.json()
    assert [r["status"] for r in stats["requests"]] == [503]
    mirror.faults.gated = True
    async with http.post(f"{mirror.base}/_mirror/reset") as resp:
        assert resp.status == 200
    assert mirror.faults == Faults() and mirror.stats.requests == []


async def test_control_endpoints_are_off_by_default(
    mirror: Mirror, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{mirror.base}/_mirror/reset") as resp:
        assert resp.status in (404, 405)


async def test_run_mirror_logs_its_real_port(
    start_mirror: StartMirror, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    root = (await start_mirror()).root
    caplog.set_level(logging.INFO, logger="lawchatd.mirror")
    task = asyncio.create_task(run_mirror(root, port=0))
    try:
        for _ in range(100):
            if match := re.search(r"mirror serving .* on (http://127\.0\.0\.1:\d+)", caplog.text):
                break
            await asyncio.sleep(0.02)
        assert match and not match.group(1).endswith(":0")
        resp = await resolve(http, f"{match.group(1)}/TheBloke/law-chat-GGUF/resolve/main/{FILE}")
        assert resp.status == 302
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_copy_of_dir_is_the_same_repo(
    start_mirror: StartMirror, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The air gap: DIR goes to another office on a USB disk (rsync -a / cp -a keep the times).
    first = await start_mirror()
    commit = (await resolve(http, first.resolve_url())).headers["X-Repo-Commit"]
    copy = tmp_path / "usb"
    shutil.copytree(first.root, copy, symlinks=True)
    async with served(create_mirror_app(copy)) as base:
        url = f"{base}/TheBloke/law-chat-GGUF/resolve"
        resp = await resolve(http, f"{url}/{commit}/{FILE}")
        assert resp.status == 302 and resp.headers["X-Repo-Commit"] == commit
        assert (await fetch(http, f"{url}/{commit}/{FILE}"))[1] == first.data
