"""The compatible routes' contract: auth, errors in `{"detail"}`, and bad input that changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest

from lawchatd.testing.daemon import API_KEY, Daemon, daemon_env
from lawchatd.testing.mirror_server import Mirror
from lawchatd.testing.models import ModelFile, write_catalog

PROTECTED = [
    ("GET", "/models/available"),
    ("POST", "/models/download"),
    ("GET", "/models/download-progress"),
    ("POST", "/models/cancel-download"),
    ("DELETE", "/models/cleanup"),
    ("GET", "/models/loaded"),
    ("GET", "/health"),
    ("POST", "/models/load"),
    ("POST", "/models/unload?model_variant=tiny-a"),
    ("POST", "/models/switch?model_variant=tiny-a"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
]


async def raw(daemon: Daemon, method: str, path: str, **kwargs) -> tuple[int, str, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, daemon.url + path, **kwargs) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}])
async def test_every_route_but_healthz_needs_the_key(daemon: Daemon, headers):
    for n, (method, path) in enumerate(PROTECTED):
        status, text, _ = await raw(daemon, method, path, headers=headers)
        if headers and n >= 5:  # issue 21: wrong keys lock the address out on every route
            assert status == 429, (method, path, status)
            continue
        assert status == 401, (method, path, status)
        if path.startswith("/v1/"):  # OpenAI's shape there
            assert json.loads(text)["error"]["message"] == "Invalid or missing API key"
        else:
            assert text == '{"detail": "Invalid or missing API key"}'
    status, text, _ = await raw(daemon, "GET", "/healthz")
    assert status == 200 and '"status": "ok"' in text


async def test_both_key_schemes_are_accepted(daemon: Daemon):
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}):
        status, _, _ = await raw(daemon, "GET", "/models/download-progress", headers=headers)
        assert status == 200
    # ?token= is for the browser's WebSocket only
    status, _, _ = await raw(daemon, "GET", f"/models/download-progress?token={API_KEY}")
    assert status == 401


async def test_idle_progress_before_any_download(daemon: Daemon):
    assert await daemon.get("/models/download-progress") == {
        "model_variant": None,
        "progress": 0,
        "status": "idle",
        "error": None,
        "total_size": 0,
        "downloaded_size": 0,
        "speed": 0.0,  # the contract: a number, 0.0 unless downloading
        "eta": None,
        "phase": None,
        "retries": 0,
        "max_rate": None,  # the bandwidth cap in effect (LAWCHATD_MAX_RATE unset)
    }


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"model_variant": "law-chat-q9"}, 400, "Unknown model variant 'law-chat-q9'"),
        ({"model_variant": "../../etc/passwd"}, 400, "Unknown model variant"),
        ({"model_variant": 42}, 422, "model_variant"),
        ({}, 422, "model_variant"),
        ({"model_variant": "tiny-a", "force": "yes"}, 422, "force"),
        ([1, 2], 422, "JSON object"),
    ],
)
async def test_bad_download_requests_get_clear_errors_and_change_nothing(
    daemon: Daemon, mirror: Mirror, body, status, detail
):
    got, reply = await daemon.post("/models/download", body)
    assert got == status and detail in reply["detail"], reply
    assert (await daemon.get("/models/download-progress"))["status"] == "idle"
    assert not any((daemon.data_dir / "models").iterdir())
    assert mirror.stats.requests == []


async def test_malformed_json_and_oversized_bodies(daemon: Daemon):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    status, text, _ = await raw(daemon, "POST", "/models/download", data=b"{nope", headers=headers)
    assert status == 422 and "JSON" in text
    big = b'{"model_variant": "' + b"x" * (2 << 20) + b'"}'
    status, text, _ = await raw(daemon, "POST", "/models/download", data=big, headers=headers)
    assert status == 413 and '"detail"' in text
    status, text, _ = await raw(daemon, "GET", "/nowhere", headers=headers)
    assert status == 404 and '"detail"' in text


async def test_a_second_variant_while_one_runs_is_409(daemon: Daemon, mirror: Mirror):
    mirror.faults.rate = 1_000_000
    assert (await daemon.post("/models/download", {"model_variant": "tiny-a"}))[0] == 200
    status, reply = await daemon.post("/models/download", {"model_variant": "tiny-b"})
    assert status == 409
    assert reply == {"detail": "Another model (tiny-a) is currently downloading"}
    status, reply = await daemon.post("/models/download", {"model_variant": "tiny-a"})
    assert status == 200 and reply["status"] == "already_downloading"
    assert reply["download_started"] is False
    await daemon.post("/models/cancel-download")


async def test_cancel_with_nothing_running(daemon: Daemon):
    status, reply = await daemon.post("/models/cancel-download")
    assert status == 200 and reply["cancelled"] is False


async def test_not_enough_disk_is_507_with_the_numbers(
    make_daemon, models: dict[str, ModelFile], tmp_path
):
    huge = ModelFile("huge", "huge.gguf", 1 << 50, "2" * 64)
    catalog = write_catalog(tmp_path / "huge.toml", {**models, "huge": huge})
    daemon = await make_daemon(LAWCHATD_CATALOG=str(catalog)).start()
    status, reply = await daemon.post("/models/download", {"model_variant": "huge"})
    assert status == 507
    assert "Not enough disk space" in reply["detail"] and str(1 << 50) in reply["detail"]
    assert (await daemon.get("/models/download-progress"))["status"] == "idle"


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lawchatd", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_refuses_a_public_address_without_a_key(tmp_path, catalog):
    env = daemon_env(tmp_path, "http://127.0.0.1:9", catalog, LAWCHATD_HOST="0.0.0.0")
    del env["LAWCHATD_API_KEY"]
    result = run_serve(env)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0 without an API key" in result.stderr


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("filename", "../../escape.gguf", "plain file name"),
        ("filename", "/etc/passwd", "plain file name"),
        ("variant", "../x", "letters, digits"),
    ],
)
def test_refuses_a_catalog_that_escapes_the_models_folder(tmp_path, field, value, words):
    entry = {"variant": "x", "repo": "a/b", "filename": "x.gguf", "size": 10, field: value}
    body = "[[models]]\n" + "".join(
        f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in entry.items()
    )
    catalog = tmp_path / "evil.toml"
    catalog.write_text(body)
    result = run_serve(daemon_env(tmp_path / "data", "http://127.0.0.1:9", catalog))
    assert result.returncode != 0
    assert words in result.stderr
    assert not (tmp_path / "escape.gguf").exists()


async def test_secrets_never_appear_in_logs_or_responses(make_daemon, mirror: Mirror):
    daemon = await make_daemon(LAWCHATD_HF_TOKEN="hf_secret_never_logged").start()
    await raw(daemon, "GET", f"/ws/progress?token={API_KEY}")
    await daemon.post("/models/download", {"model_variant": "tiny-small"})
    await daemon.wait_done()
    await asyncio.sleep(0.2)
    everything = daemon.log() + str(await daemon.get("/models/available"))
    assert API_KEY not in everything
    assert "hf_secret_never_logged" not in everything
    assert "token=***" in daemon.log()
