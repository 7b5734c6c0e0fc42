"""Issue 21, items 1 and 2, against one real daemon (a tiny real model loaded, so chat answers):
keys made with the real `lawchatd keys` command while the daemon runs, every route called
with each kind of key (in the header and through a session cookie), and what the audit trail
then holds, exported and verified by the real `lawchatd audit` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lawchatd.testing.daemon import API_KEY, Daemon, clean_env, loaded_daemon
from lawchatd.testing.models import ModelFile

VARIANT = "tiny-small"
CHAT = {"model": VARIANT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}

# The policy, written out again on purpose (not read from lawchatd/web/roles.py):
# R = every role may, C = admin and user (chat), A = admin only.
ROUTES: list[tuple[str, str, object, str]] = [
    ("GET", "/models/available", None, "R"),
    ("GET", "/models/download-progress", None, "R"),
    ("GET", "/models/loaded", None, "R"),  # the old app's
    ("GET", "/health", None, "R"),  # the old app's
    ("GET", "/downloads", None, "R"),
    ("GET", "/downloads/history", None, "R"),
    ("GET", "/downloads/bandwidth", None, "R"),
    ("GET", "/session", None, "R"),
    ("GET", "/v1/models", None, "R"),
    ("POST", "/v1/chat/completions", CHAT, "C"),
    ("POST", "/models/download", {"model_variant": "no-such-model"}, "A"),  # the old app's
    ("POST", "/models/cancel-download", None, "A"),  # the old app's
    ("DELETE", "/models/cleanup", None, "A"),  # the old app's
    ("POST", "/models/load", {"model_variant": "no-such-model"}, "A"),
    ("POST", "/models/unload?model_variant=no-such-model", None, "A"),  # the old app's
    ("POST", "/models/switch?model_variant=no-such-model", None, "A"),  # the old app's
    ("PUT", "/downloads/bandwidth", {"max_rate": None}, "A"),
    ("DELETE", "/downloads/no-such-model", None, "A"),
    ("GET", "/metrics", None, "A"),
    ("GET", "/keys", None, "A"),
    ("POST", "/keys", {"name": "!"}, "A"),
    ("DELETE", "/keys/nobody", None, "A"),
]
ALLOWED = {"admin": "RCA", "user": "RC", "viewer": "R"}


def cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    env = clean_env(LAWCHATD_DATA_DIR=str(data), LAWCHATD_ENV_FILE="/nonexistent")
    return subprocess.run(
        [sys.executable, "-m", "lawchatd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def add_key(data: Path, name: str, role: str, *extra: str) -> str:
    done = cli(data, "keys", "add", name, "--role", role, *extra)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 20, done.stdout  # the key alone on its line
    assert all(c.isalnum() or c in "-_" for c in lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, hub_root: Path, models: dict[str, ModelFile]
) -> Iterator[Daemon]:
    data = tmp_path_factory.mktemp("data")
    with loaded_daemon(data, hub_root, models, VARIANT, LAWCHATD_AUDIT_CONTENT="false") as served:
        yield served


async def call(
    daemon: Daemon,
    key: str | None,
    method: str,
    path: str,
    body: object = None,
    cookie: str | None = None,
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if cookie:
        headers["Cookie"] = f"lawchatd_session={cookie}"
    kwargs = {"json": body} if body is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, daemon.url + path, headers=headers, **kwargs) as resp,
    ):
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, {"text": text[:200]}


async def login(daemon: Daemon, key: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(daemon.url + "/session", json={"api_key": key}) as resp,
    ):
        assert resp.status == 204, await resp.text()
        return resp.cookies["lawchatd_session"].value


def expect_allowed(status: int, body: dict, who: str, route: tuple) -> None:
    assert status not in (401, 403, 429), (who, route, status, body)
    assert status < 500 or route[1].startswith("/v1/"), (who, route, status, body)


def expect_refused(status: int, body: dict, role: str, route: tuple) -> None:
    assert status == 403, (role, route, status, body)
    if route[1].startswith("/v1/"):
        error = body["error"]  # OpenAI's shape
        assert error["type"] == "permission_error" and f"'{role}'" in error["message"], body
    else:
        assert f"role '{role}'" in body["detail"] and "administrator" in body["detail"], body


async def test_every_route_with_every_kind_of_key(daemon: Daemon) -> None:
    data = daemon.data_dir
    keys = {
        "admin": API_KEY,  # the bootstrap key
        "carla": add_key(data, "carla", "admin"),
        "anna": add_key(data, "anna", "user"),
        "victor": add_key(data, "victor", "viewer"),
    }
    roles = {"admin": "admin", "carla": "admin", "anna": "user", "victor": "viewer"}
    revoked = add_key(data, "rita", "user")
    assert cli(data, "keys", "revoke", "rita").returncode == 0
    expired = add_key(data, "eve", "user", "--expires", "2999-01-01")
    with contextlib.closing(sqlite3.connect(data / "lawchatd.sqlite3")) as db:
        db.execute("UPDATE api_keys SET expires = ? WHERE name = 'eve'", (time.time() - 1,))
        db.commit()
    await asyncio.sleep(1.2)  # the daemon re-reads keys changed by another process each second

    # Bad keys first: they lock the address out after five, and the right keys below still work.
    first = True
    for key, word in ((revoked, "revoked"), (expired, "expired"), (None, "missing")):
        for route in ROUTES:
            status, body = await call(daemon, key, route[0], route[1], route[2])
            if first and key is not None:
                assert status == 401 and word in json.dumps(body), (route, body)
                first = False
            assert status in (401, 429), (word, route, status, body)
    status, _ = await call(daemon, "no-such-key", "GET", "/models/available")
    assert status == 429  # locked out ...

    for who, key in keys.items():  # ... yet every right key answers, in the header
        for route in ROUTES:
            status, body = await call(daemon, key, route[0], route[1], route[2])
            if route[3] in ALLOWED[roles[who]]:
                expect_allowed(status, body, who, route)
            else:
                expect_refused(status, body, roles[who], route)

    for who in ("anna", "victor", "carla"):  # and through a session cookie
        cookie = await login(daemon, keys[who])
        status, me = await call(daemon, None, "GET", "/session", cookie=cookie)
        assert status == 200 and me["name"] == who and me["role"] == roles[who], me
        for route in ROUTES:
            status, body = await call(daemon, None, route[0], route[1], route[2], cookie=cookie)
            if route[3] in ALLOWED[roles[who]]:
                expect_allowed(status, body, who, route)
            else:
                expect_refused(status, body, roles[who], route)

    # A chat by a user answers and is audited; the text is not kept.
    status, answer = await call(daemon, keys["anna"], "POST", "/v1/chat/completions", CHAT)
    assert status == 200 and answer["usage"]["completion_tokens"] > 0, answer

    # Revoking ends the key and its browser session at once (here over the admin API).
    cookie = await login(daemon, keys["anna"])
    status, _ = await call(daemon, keys["carla"], "DELETE", "/keys/anna")
    assert status == 200
    assert (await call(daemon, keys["anna"], "GET", "/models/available"))[0] in (401, 429)
    assert (await call(daemon, None, "GET", "/models/available", cookie=cookie))[0] == 401

    # The admin API makes a key that works at once and lists keys, never a key or a digest.
    status, made = await call(
        daemon, keys["carla"], "POST", "/keys", {"name": "bo", "role": "viewer"}
    )
    assert status == 201 and made["role"] == "viewer", made
    assert (await call(daemon, made["key"], "GET", "/models/loaded"))[0] == 200
    status, listed = await call(daemon, keys["carla"], "GET", "/keys")
    text = json.dumps(listed)
    assert {"anna", "bo", "carla", "rita", "eve", "victor"} <= {k["name"] for k in listed["keys"]}
    assert all(key not in text for key in [*keys.values(), made["key"]]) and "digest" not in text

    listing = cli(data, "keys", "list")
    assert listing.returncode == 0 and "victor" in listing.stdout and "viewer" in listing.stdout
    assert not any(key in listing.stdout for key in keys.values())
    stored = (data / "lawchatd.sqlite3").read_bytes()
    assert not any(key.encode() in stored for key in [*keys.values(), made["key"]])

    await _the_trail_holds_who_did_what(daemon)


async def _the_trail_holds_who_did_what(daemon: Daemon) -> None:
    await asyncio.sleep(0.3)  # a chat's record is written just after its answer
    exported = cli(daemon.data_dir, "audit")
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    for event in events:
        assert {"time", "actor", "action", "target", "outcome"} <= event.keys()

    def find(**want) -> list[dict]:
        return [e for e in events if all(e.get(k) == v for k, v in want.items())]

    assert find(actor="anna", action="download", outcome="refused")  # a user's download
    failed = find(actor="admin", action="download", outcome="failed", target="no-such-model")
    assert failed and failed[0]["detail"]["asked"] == {"model_variant": "no-such-model"}
    assert find(actor="admin", action="load", outcome="ok", target=VARIANT)
    assert find(actor="carla", action="key.revoke", target="anna", outcome="ok")
    assert find(action="key.add", target="victor", outcome="ok")  # by the CLI
    assert find(actor="victor", action="login", outcome="ok")
    assert find(actor="rita (revoked key)", action="auth.failed", outcome="refused")
    chats = [e for e in find(actor="anna", action="chat") if e["detail"]["status"] == 200]
    assert chats and chats[-1]["detail"]["model"] == VARIANT
    assert chats[-1]["detail"]["completion_tokens"] > 0 and "prompt" not in chats[-1]["detail"]
    assert "Hi" not in exported.stdout  # no chat text without LAWCHATD_AUDIT_CONTENT
    assert not any(API_KEY in line for line in exported.stdout.splitlines())

    since = cli(daemon.data_dir, "audit", "--since", "2999-01-01")
    assert since.returncode == 0 and since.stdout == ""
    verified = cli(daemon.data_dir, "audit", "--verify")
    assert verified.returncode == 0 and "whole" in verified.stdout, verified.stdout


def _copy_db(daemon: Daemon, to: Path) -> Path:
    to.mkdir()
    with (
        contextlib.closing(sqlite3.connect(daemon.data_dir / "lawchatd.sqlite3")) as source,
        contextlib.closing(sqlite3.connect(to / "lawchatd.sqlite3")) as copy,
    ):
        source.backup(copy)
    return to / "lawchatd.sqlite3"


async def test_audit_verify_names_an_edited_and_a_deleted_row(
    daemon: Daemon, tmp_path: Path
) -> None:
    for _ in range(3):  # a few events of its own, whichever test ran first
        await call(daemon, API_KEY, "POST", "/models/cancel-download")
    edited = _copy_db(daemon, tmp_path / "edited")
    with contextlib.closing(sqlite3.connect(edited)) as db:
        (row,) = db.execute("SELECT id FROM audit ORDER BY id LIMIT 1 OFFSET 2").fetchone()
        db.execute("UPDATE audit SET actor = 'someone else' WHERE id = ?", (row,))
        db.commit()
    done = cli(edited.parent, "audit", "--verify")
    assert done.returncode == 1 and f"row {row}" in done.stdout and "edited" in done.stdout

    deleted = _copy_db(daemon, tmp_path / "deleted")
    with contextlib.closing(sqlite3.connect(deleted)) as db:
        db.execute("DELETE FROM audit WHERE id = ?", (row,))
        db.commit()
    done = cli(deleted.parent, "audit", "--verify")
    assert done.returncode == 1 and f"row {row + 1}" in done.stdout, done.stdout
    assert "deleted" in done.stdout

    cut = _copy_db(daemon, tmp_path / "cut")
    with contextlib.closing(sqlite3.connect(cut)) as db:
        db.execute("DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)")
        db.commit()
    done = cli(cut.parent, "audit", "--verify")
    assert done.returncode == 1 and "deleted" in done.stdout, done.stdout


async def test_an_action_the_trail_cannot_record_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    db_path = daemon.data_dir / "lawchatd.sqlite3"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("ALTER TABLE audit RENAME TO audit_away")
        db.commit()
    try:
        status, body = await call(
            daemon, API_KEY, "POST", "/models/unload?model_variant=" + VARIANT
        )
        assert status == 503 and "audit trail could not record it" in body["detail"], body
        assert (await call(daemon, API_KEY, "GET", "/models/loaded"))[1]["active_model"] == VARIANT
        status, body = await call(daemon, API_KEY, "POST", "/v1/chat/completions", CHAT)
        assert status == 503 and "audit trail" in body["error"]["message"], body
    finally:
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("ALTER TABLE audit_away RENAME TO audit")
            db.commit()
    status, _ = await call(daemon, API_KEY, "POST", "/models/cancel-download")
    assert status == 200  # the trail works again: so do actions, and chat after them
    assert (await call(daemon, API_KEY, "POST", "/v1/chat/completions", CHAT))[0] == 200


async def test_the_websocket_takes_a_persons_key_and_cookie(daemon: Daemon) -> None:
    viewer = add_key(daemon.data_dir, "wendy", "viewer")
    await asyncio.sleep(1.2)  # made by another process: read within a second
    cookie = await login(daemon, viewer)
    async with aiohttp.ClientSession() as session:
        for url, headers in (
            (f"{daemon.url}/ws/progress?token={viewer}", {}),
            (f"{daemon.url}/ws/progress", {"Cookie": f"lawchatd_session={cookie}"}),
        ):
            async with session.ws_connect(url, headers=headers) as ws:
                assert (await ws.receive_json())["type"] == "snapshot"
        # A socket outlives the request that opened it: revoking the key ends it too.
        async with session.ws_connect(f"{daemon.url}/ws/progress?token={viewer}") as ws:
            assert (await ws.receive_json())["type"] == "snapshot"
            assert cli(daemon.data_dir, "keys", "revoke", "wendy").returncode == 0
            started = time.monotonic()
            while (await ws.receive(timeout=10)).type not in (
                aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING
            ):
                pass
            assert time.monotonic() - started < 8


def test_names_lawchatd_acts_under_and_limits_that_refuse_everything_are_refused(
    tmp_path: Path,
) -> None:
    # "admin" is the bootstrap key's name and "lawchatd" the daemon's own actions: a person's
    # key under either would merge two actors in the audit trail, usage and /metrics.
    for name in ("admin", "lawchatd"):
        done = cli(tmp_path, "keys", "add", name, "--role", "user")
        assert done.returncode != 0 and "lawchatd's own" in done.stderr, done.stderr
    done = cli(tmp_path, "keys", "add", "anna", "--role", "user", "--max-concurrent", "0")
    assert done.returncode != 0 and "at least 1" in done.stderr, done.stderr
    assert "anna" not in cli(tmp_path, "keys", "list").stdout


def last_used(data: Path, name: str) -> float | None:
    with contextlib.closing(sqlite3.connect(data / "lawchatd.sqlite3")) as db:
        (used,) = db.execute("SELECT last_used FROM api_keys WHERE name = ?", (name,)).fetchone()
    return used


async def test_a_keys_use_is_written_once_a_minute_not_per_request(daemon: Daemon) -> None:
    key = add_key(daemon.data_dir, "frequent-user", "viewer")
    for _ in range(5):
        status, _ = await call(daemon, key, "GET", "/models/available")
        assert status == 200
    status, body = await call(daemon, API_KEY, "GET", "/keys")
    (listed,) = [k for k in body["keys"] if k["name"] == "frequent-user"]
    assert listed["last_used"] is not None
    used = await asyncio.to_thread(last_used, daemon.data_dir, "frequent-user")
    await call(daemon, key, "GET", "/models/available")
    # Within the minute, another use is not written again.
    assert await asyncio.to_thread(last_used, daemon.data_dir, "frequent-user") == used
