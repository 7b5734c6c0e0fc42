"""CSRF and DNS rebinding (issue 9, item 1) with a real Chromium: a hostile page on another
origin tries everything a page can do without the user noticing (a text/plain form post, no-cors
fetches, a WebSocket), and a rebound host name tries to read the daemon. Nothing gets through,
whether the daemon has a key (and the browser a session cookie) or none."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import served

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's Chromium at /usr/bin/chromium", allow_module_level=True)

from playwright.async_api import Browser, BrowserContext, async_playwright  # noqa: E402

from tests.test_dashboard import CHROMIUM_ARGS, open_dashboard  # noqa: E402

pytestmark = pytest.mark.timeout(60)
EVIL = "evil.example"

HOSTILE_PAGE = """<!doctype html><meta charset="utf-8"><title>cheap flights</title>
<iframe name="sink"></iframe>
<form id="form" method="POST" action="DAEMON/models/download" enctype="text/plain" target="sink">
<input name='{"model_variant": "tiny-small", "x": "' value='"}'></form>
<script>
const result = { ws: "pending", fetches: [] };
window.result = result;
(async () => {
  document.getElementById("form").submit();
  const body = '{"model_variant": "tiny-small"}';
  for (const path of ["/models/download", "/models/cancel-download", "/models/load"]) {
    try {
      await fetch("DAEMON" + path, { method: "POST", mode: "no-cors", credentials: "include",
                                     headers: { "Content-Type": "text/plain" }, body });
      result.fetches.push("sent");
    } catch (error) { result.fetches.push("failed"); }
  }
  await new Promise((resolve) => {
    const ws = new WebSocket("DAEMON".replace("http", "ws") + "/ws/progress");
    ws.onopen = () => { result.ws = "open"; resolve(); };
    ws.onerror = () => { result.ws = "refused"; resolve(); };
  });
  result.done = true;
})();
</script>"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    # evil.example resolves to loopback, as an attacker's DNS would make it.
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser
        await browser.close()


@dataclass
class HostileSite:
    """A web server on loopback serving HOSTILE_PAGE aimed at `target`."""

    port: int
    target: str = ""


@pytest.fixture
async def hostile_site() -> AsyncIterator[HostileSite]:
    site = HostileSite(free_port())

    async def page(request: web.Request) -> web.Response:
        html = HOSTILE_PAGE.replace("DAEMON", site.target)
        return web.Response(text=html, content_type="text/html")

    async def framing(request: web.Request) -> web.Response:
        html = f'<!doctype html><iframe id="dashboard" src="{site.target}/"></iframe>'
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/frame", framing)
    async with served(app, site.port):
        yield site


async def refused_everything(context: BrowserContext, daemon: Daemon, page_url: str) -> None:
    page = await context.new_page()
    try:
        await page.goto(page_url)
        await page.wait_for_function("window.result && window.result.done", timeout=15_000)
        result = await page.evaluate("window.result")
        await page.wait_for_timeout(500)  # the form's navigation lands in the iframe
    finally:
        await page.close()
    assert result["ws"] == "refused", result
    assert (await daemon.get("/models/download-progress"))["status"] == "idle"
    assert not any((daemon.data_dir / "models").iterdir())
    refusals = re.findall(r'"POST /models/[\w-]+" 403', daemon.log())
    assert len(refusals) >= 4, daemon.log()[-3000:]  # the form and the three fetches
    assert re.search(r'"GET /ws/progress" 403', daemon.log())


async def test_a_page_on_another_port_cannot_ride_the_session_cookie(
    browser: Browser, daemon: Daemon, hostile_site: HostileSite
) -> None:
    """127.0.0.1:other is "same-site" with the daemon: SameSite=Strict does not stop the
    cookie from going along, the Origin check does."""
    context = await browser.new_context()
    await open_dashboard(await context.new_page(), daemon)  # the lawyer is logged in...
    hostile_site.target = daemon.url
    # ...and opens the hostile page in another tab of the same browser.
    await refused_everything(context, daemon, f"http://127.0.0.1:{hostile_site.port}/")


async def test_a_foreign_site_cannot_drive_a_daemon_without_a_key(
    browser: Browser, make_daemon: Callable[..., Daemon], hostile_site: HostileSite
) -> None:
    daemon = await make_daemon(LAWCHATD_API_KEY="").start()
    hostile_site.target = daemon.url
    await refused_everything(
        await browser.new_context(), daemon, f"http://{EVIL}:{hostile_site.port}/"
    )


async def test_a_rebound_name_reads_nothing(browser: Browser, make_daemon) -> None:
    daemon = await make_daemon(LAWCHATD_API_KEY="").start()
    port = daemon.url.rsplit(":", 1)[1]
    page = await browser.new_page()
    for path in ("/models/available", "/", "/healthz"):
        response = await page.goto(f"http://{EVIL}:{port}{path}")
        assert response is not None and response.status == 421, path
        assert "available_models" not in await response.text()


async def test_the_logged_in_dashboard_cannot_be_framed(
    browser: Browser, daemon: Daemon, hostile_site: HostileSite
) -> None:
    """Clickjacking: a same-site page frames the dashboard (the cookie would go along) to steer
    a lawyer's clicks; the browser refuses to show it."""
    context = await browser.new_context()
    await open_dashboard(await context.new_page(), daemon)
    hostile_site.target = daemon.url
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{hostile_site.port}/frame")
    await page.wait_for_timeout(1000)
    (frame,) = [f for f in page.frames if f != page.main_frame]
    shown = await frame.evaluate("document.querySelector('#key-form, #dashboard') !== null")
    assert shown is False, frame.url
