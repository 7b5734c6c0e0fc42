"""The old app's web page, request for request, against the daemon.

The page (served by the FastAPI app lawchatd replaces) calls its routes same-origin with
`fetch`: no auth header of its own, `Content-Type: application/json` on JSON bodies, the
browser's `Origin` on POST/DELETE, and reads the fields below. `OldPage` makes those calls
and reads the answers the way the page's script does (`loaded_models.length`, `data.loaded`,
`data.message`), so a shape it cannot read fails here as it failed in the browser.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror

Json = dict[str, Any]


class OldPage:
    def __init__(self, daemon: Daemon | OldPage, key: str | None = None) -> None:
        self.url = daemon.url
        self.key = key  # the old Python client sends Bearer; the page itself sends none
        # A browser's cookie jar (aiohttp's own refuses cookies from an IP address).
        self.jar = aiohttp.CookieJar(unsafe=True)

    async def call(self, method: str, path: str, body: Json | None = None) -> tuple[int, Json]:
        headers = {"Accept": "*/*"}
        if method != "GET":
            headers["Origin"] = self.url  # what a browser adds to a same-origin POST
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        async with (
            aiohttp.ClientSession(cookie_jar=self.jar) as session,
            session.request(method, self.url + path, json=body, headers=headers) as resp,
        ):
            if resp.status == 204:
                return resp.status, {}
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Json | None = None) -> Json:
        status, data = await self.call(method, path, body)
        assert status == 200, (method, path, status, data)
        return data

    # --- what the page's script does with the answers ---

    async def health(self) -> Json:
        data = await self.ok("GET", "/health")
        assert data["status"] == "healthy"
        assert isinstance(data["ai_engine_loaded"], bool)
        assert isinstance(data["loaded_models_count"], int)
        assert data["active_model"] is None or isinstance(data["active_model"], str)
        assert len(data["available_models"]) > 0
        return data

    async def loaded(self) -> Json:
        data = await self.ok("GET", "/models/loaded")
        assert isinstance(data["loaded_models"], list)  # the page reads .length
        for model in data["loaded_models"]:
            assert set(model) >= {"model_variant", "model_path", "loaded_at", "memory_usage"}
            assert isinstance(model["is_active"], bool)
            assert isinstance(model["memory_usage"], int) and model["memory_usage"] > 0
        assert isinstance(data["total_memory_usage"], int)
        return data

    async def progress(self) -> Json:
        p = await self.ok("GET", "/models/download-progress")
        assert set(p) >= {"model_variant", "progress", "status", "error", "total_size"}
        assert set(p) >= {"downloaded_size", "speed", "eta"}
        assert isinstance(p["progress"], int | float)
        return p

    async def wait_status(self, *wanted: str) -> Json:
        for _ in range(1500):
            p = await self.progress()
            if p["status"] in wanted:
                return p
            await asyncio.sleep(0.02)  # the page polls; faster here
        raise AssertionError(f"no {wanted}: {p}")

    async def load(self, variant: str) -> Json:
        data = await self.ok(
            "POST", "/models/load", {"model_variant": variant, "force_reload": False}
        )
        # The page: `if (data.loaded) ... else alert("Failed to load model: " + data.message)`.
        assert data["loaded"] is True and data["status"] == "loaded", data
        assert isinstance(data["message"], str) and data["message"]
        assert data["model_variant"] == variant
        return data


async def test_the_old_page_without_a_key(make_daemon, mirror: Mirror) -> None:
    daemon = await make_daemon(LAWCHATD_API_KEY="").start()
    await the_old_page(OldPage(daemon), mirror)


async def test_the_old_page_with_a_key_through_the_session(make_daemon, mirror: Mirror) -> None:
    page = OldPage(await make_daemon().start())  # LAWCHATD_API_KEY is set
    probe = OldPage(page, API_KEY)  # past the key check: is there a /session route at all?
    if (await probe.call("POST", "/session", {"api_key": API_KEY}))[0] in (404, 405):
        pytest.skip("POST /session comes with the browser sessions of issue 9")
    status, _ = await page.call("POST", "/session", {"api_key": API_KEY})
    assert status == 204 and len(page.jar) == 1
    await the_old_page(page, mirror)


async def the_old_page(page: OldPage, mirror: Mirror) -> None:

    # Opening the page.
    health = await page.health()
    assert (health["ai_engine_loaded"], health["loaded_models_count"]) == (False, 0)
    assert "tiny-a" in health["available_models"] and health["active_model"] is None
    loaded = await page.loaded()
    assert loaded["loaded_models"] == [] and loaded["active_model"] is None
    available = await page.ok("GET", "/models/available")
    assert available["available_models"]["tiny-a"]["downloaded"] is False

    # Download with a live bar, a 409 for a second one, cancel, resume.
    mirror.faults.rate = 1_000_000
    started = await page.ok("POST", "/models/download", {"model_variant": "tiny-a"})
    assert started["status"] == "download_started" and started["download_started"] is True
    for _ in range(500):
        p = await page.progress()
        if p["status"] == "downloading" and p["downloaded_size"] > 0:
            break
        await asyncio.sleep(0.02)
    status, busy = await page.call("POST", "/models/download", {"model_variant": "tiny-small"})
    assert status == 409 and busy["detail"] == "Another model (tiny-a) is currently downloading"
    cancelled = await page.ok("POST", "/models/cancel-download")
    assert cancelled["cancelled"] is True and isinstance(cancelled["message"], str)
    stopped = await page.wait_status("cancelled")
    mirror.faults.rate = None
    resumed = await page.ok("POST", "/models/download", {"model_variant": "tiny-a"})
    assert resumed["download_started"] is True
    done = await page.wait_status("completed", "error")
    assert done["status"] == "completed" and done["downloaded_size"] >= stopped["downloaded_size"]
    status, bad = await page.call("POST", "/models/download", {"model_variant": "nope"})
    assert status == 400 and "nope" in bad["detail"]

    # Load: the page reads `loaded`, `message`, then the loaded list.
    status, missing = await page.call("POST", "/models/load", {"model_variant": "tiny-small"})
    assert status == 404 and missing["detail"]
    await page.load("tiny-a")
    loaded = await page.loaded()
    assert len(loaded["loaded_models"]) == 1 and loaded["active_model"] == "tiny-a"
    entry = loaded["loaded_models"][0]
    assert entry["model_variant"] == "tiny-a" and entry["is_active"] is True
    assert entry["model_path"].endswith("tiny-a.gguf") and entry["loaded_at"]
    assert loaded["total_memory_usage"] == entry["memory_usage"]
    assert loaded["status"] == "ready" and loaded["model_variant"] == "tiny-a"  # lawchatd's, beside
    health = await page.health()
    assert (health["ai_engine_loaded"], health["loaded_models_count"]) == (True, 1)
    assert health["active_model"] == "tiny-a"
    again = await page.load("tiny-a")  # already loaded: no reload
    assert again["loaded_model"]["loaded_at"] == entry["loaded_at"]

    # Switch: to the loaded model; any other is not loaded.
    switched = await page.ok("POST", "/models/switch?model_variant=tiny-a")
    assert switched == {
        "message": switched["message"],
        "model_variant": "tiny-a",
        "status": "active",
    }
    status, refused = await page.call("POST", "/models/switch?model_variant=tiny-b")
    assert status == 400 and "not loaded" in refused["detail"]

    # Switch and Unload as the page's buttons send them: the variant in a JSON body.
    switched = await page.ok("POST", "/models/switch", {"model_variant": "tiny-a"})
    assert switched["status"] == "active"
    not_loaded = await page.ok("POST", "/models/unload", {"model_variant": "tiny-b"})
    assert not_loaded["status"] == "not_loaded"
    unloaded = await page.ok("POST", "/models/unload", {"model_variant": "tiny-a"})
    assert unloaded["status"] == "unloaded" and unloaded["model_variant"] == "tiny-a"
    loaded = await page.loaded()
    assert loaded["loaded_models"] == [] and loaded["active_model"] is None
    assert loaded["status"] == "none"
    cleaned = await page.ok("DELETE", "/models/cleanup")
    assert isinstance(cleaned["files_cleaned"], int)


async def test_old_routes_with_a_key_and_a_failed_load(make_daemon, mirror: Mirror) -> None:
    daemon = await make_daemon().start()  # LAWCHATD_API_KEY is set
    for path in ("/health", "/models/loaded"):
        status, body = await OldPage(daemon).call("GET", path)
        assert status == 401 and body == {"detail": "Invalid or missing API key"}
    page = OldPage(daemon, API_KEY)
    for variant in ("tiny-small", "tiny-broken"):
        await page.ok("POST", "/models/download", {"model_variant": variant})
        assert (await page.wait_status("completed", "error"))["status"] == "completed"
    await page.load("tiny-small")

    status, failed = await page.call(
        "POST", "/models/load", {"model_variant": "tiny-broken", "force_reload": False}
    )
    assert status == 500 and failed["loaded"] is False and failed["status"] == "failed"
    assert "tiny-broken" in failed["message"] and failed["detail"] == failed["message"]
    assert (await page.loaded())["active_model"] == "tiny-small"  # the old model still answers

    status, missing = await page.call("POST", "/models/unload")
    assert status == 422 and "model_variant" in missing["detail"]
    assert (await page.ok("POST", "/models/unload?model_variant=tiny-small"))["status"] == (
        "unloaded"
    )

    # Unloaded stays unloaded across a restart (it is no longer the active model).
    await daemon.close()
    daemon = await make_daemon().start()
    await asyncio.sleep(0.5)
    assert (await OldPage(daemon, API_KEY).loaded())["loaded_models"] == []


async def test_speed_is_a_float_when_idle_as_the_old_response_model_declared(
    make_daemon, mirror: Mirror
) -> None:
    page = OldPage(await make_daemon(LAWCHATD_API_KEY="").start())
    assert (await page.progress())["speed"] == 0.0


async def test_a_file_missing_upstream_polls_in_the_old_shape(
    make_daemon, mirror: Mirror, models, tmp_path
) -> None:
    """The page's timer divides by `total_size` and stops on "error": a file the Hub does not
    have must answer the old shape (the catalog's size, the error in words), not a size of 0."""
    from lawchatd.testing.models import ModelFile, write_catalog

    ghost = ModelFile("ghost", "ghost.gguf", 1000, "1" * 64)
    catalog = write_catalog(tmp_path / "ghost.toml", {**models, "ghost": ghost})
    page = OldPage(await make_daemon(LAWCHATD_API_KEY="", LAWCHATD_CATALOG=str(catalog)).start())
    started = await page.ok("POST", "/models/download", {"model_variant": "ghost"})
    assert started["download_started"] is True
    failed = await page.wait_status("error")
    assert failed["model_variant"] == "ghost" and failed["total_size"] == 1000
    assert failed["progress"] == 0 and failed["downloaded_size"] == 0
    assert failed["speed"] == 0.0 and failed["eta"] is None
    assert "ghost.gguf was not found" in failed["error"]
    listed = await page.ok("GET", "/models/available")
    assert listed["download_status"]["total_size"] == 1000
