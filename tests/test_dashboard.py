"""The dashboard at `/`, driven in a real headless Chromium against a real daemon.

Assertions are about what a user sees: roles, labels and text. Debian's Chromium
(`apt-get install chromium`) is driven by Playwright's bundled driver; no browser is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lawchatd.testing.daemon import API_KEY, Daemon
from lawchatd.testing.mirror_server import Mirror
from lawchatd.testing.models import REPO, ModelFile, write_catalog

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LOCAL = ("http://127.0.0.1:", "data:")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
if not CHROMIUM.exists():
    pytest.skip(
        "needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.async_api import Page, async_playwright, expect  # noqa: E402

pytestmark = pytest.mark.timeout(60)
expect.set_options(timeout=10_000)


@pytest.fixture
async def browser_page() -> AsyncIterator[Page]:
    """A fresh page in a fresh browser. Fails the test on an uncaught JavaScript error, and
    on any request that leaves loopback (no CDN, no web fonts: the server may be offline)."""
    errors: list[str] = []
    outside: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "request",
            lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url),
        )
        yield page
        await browser.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
    assert not outside, f"the page fetched from outside the daemon: {outside}"


async def open_dashboard(page: Page, daemon: Daemon, key: str = API_KEY) -> None:
    await page.goto(daemon.url + "/")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Connect").click()
    if key == API_KEY:
        await expect(connection(page)).to_have_text("Connected")


def connection(page: Page):
    return page.locator("#connection")


def card(page: Page, variant: str):
    heading = page.get_by_role("heading", name=variant, exact=True)
    return page.get_by_role("listitem").filter(has=heading)


async def bar_value(page: Page) -> float:
    return await page.get_by_role("progressbar").evaluate("bar => bar.value")


async def sample_bar_until(page: Page, percent: float, seconds: float = 10) -> list[float]:
    seen: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (not seen or seen[-1] < percent):
        seen.append(await bar_value(page))
        await page.wait_for_timeout(200)
    assert seen[-1] >= percent, seen
    return seen


async def download_and_wait(daemon: Daemon, variant: str) -> None:
    status, body = await daemon.post("/models/download", {"model_variant": variant})
    assert status == 200, body
    done = await daemon.wait_done()
    assert done["status"] == "completed", done


async def test_download_shows_rising_progress_until_completed(
    browser_page: Page, daemon: Daemon, mirror: Mirror, models: dict[str, ModelFile]
) -> None:
    page = browser_page
    mirror.faults.rate = 1_500_000  # about 4.5 s for tiny-a: time to watch it
    await open_dashboard(page, daemon)
    tiny_a = card(page, "tiny-a")
    size_mb = f"{models['tiny-a'].size / 1e6:.1f} MB"  # decimal units, as disks are sold
    await expect(tiny_a).to_contain_text(size_mb)
    await expect(tiny_a).to_contain_text("Not downloaded")

    await tiny_a.get_by_role("button", name="Download tiny-a", exact=True).click()
    await expect(page.locator("#dl-title")).to_have_text("Downloading tiny-a")
    await expect(
        tiny_a.get_by_role("button", name="Cancel the download of tiny-a", exact=True)
    ).to_be_visible()

    # The bar rises over time (sampled from the page, which only hears the WebSocket).
    seen = await sample_bar_until(page, 15)
    await expect(page.locator("#dl-speed")).to_have_text(re.compile(r"^\d+\.\d MB/s$"))
    await expect(page.locator("#dl-eta")).to_have_text(re.compile(r"^\d+ s$"))
    await expect(page.locator("#dl-phase")).to_have_text("Downloading")
    await expect(page.locator("#dl-percent")).to_contain_text(f"of {size_mb}")
    seen += await sample_bar_until(page, 40)
    assert len(set(seen)) >= 3 and seen == sorted(seen), seen
    assert seen[-1] < 100, seen

    await page.screenshot(path=ARTIFACTS / "dashboard-mid-download.png", full_page=True)
    await page.set_viewport_size({"width": 375, "height": 812})
    await page.screenshot(path=ARTIFACTS / "dashboard-375px.png", full_page=True)
    # Nothing sticks out sideways on a phone.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375

    await expect(page.locator("#dl-title")).to_have_text("tiny-a downloaded")
    assert await bar_value(page) == 100
    await expect(
        page.get_by_role("status").filter(has_text="downloaded and verified")
    ).to_be_visible()
    await expect(tiny_a).to_contain_text("Downloaded")
    await expect(tiny_a.get_by_role("button", name="Load tiny-a", exact=True)).to_be_visible()
    await expect(tiny_a.get_by_role("button", name="Download tiny-a", exact=True)).to_be_hidden()


async def test_cancel_shows_resume(browser_page: Page, daemon: Daemon, mirror: Mirror) -> None:
    page = browser_page
    mirror.faults.rate = 1_000_000
    await open_dashboard(page, daemon)
    await card(page, "tiny-b").get_by_role("button", name="Download tiny-b", exact=True).click()
    await expect(page.locator("#dl-title")).to_have_text("Downloading tiny-b")

    # A second download while one runs is offered as a queue: tests/test_dashboard_office.py.

    while await bar_value(page) < 5:
        await page.wait_for_timeout(100)
    await (
        card(page, "tiny-b")
        .get_by_role("button", name="Cancel the download of tiny-b", exact=True)
        .click()
    )
    await expect(page.locator("#dl-title")).to_contain_text("cancelled")
    tiny_b = card(page, "tiny-b")
    resume = tiny_b.get_by_role("button", name="Resume tiny-b", exact=True)
    await expect(resume).to_be_visible()
    await expect(resume).to_have_text("Resume")
    await expect(tiny_b).to_contain_text(
        re.compile(r"Partly downloaded: [\d.]+ [kM]B of [\d.]+ MB")
    )

    # Resume finishes the file from where it stopped.
    mirror.faults.rate = None
    await resume.click()
    await expect(page.locator("#dl-title")).to_have_text("tiny-b downloaded")
    await expect(tiny_b).to_contain_text("Downloaded")


async def test_wrong_hash_is_an_error_in_words(
    browser_page: Page, daemon: Daemon, mirror: Mirror
) -> None:
    page = browser_page
    mirror.faults.corrupt_at = 3_000_000
    await open_dashboard(page, daemon)
    await card(page, "tiny-a").get_by_role("button", name="Download tiny-a", exact=True).click()
    await expect(page.locator("#dl-title")).to_have_text("The download of tiny-a failed")
    failure = page.locator("#dl-error")
    await expect(failure).to_be_visible()
    await expect(failure).to_have_attribute("role", "alert")
    await expect(failure).to_contain_text("sha256 mismatch")
    await expect(failure).to_contain_text("it was deleted")
    await expect(card(page, "tiny-a")).to_contain_text("Not downloaded")
    await page.screenshot(path=ARTIFACTS / "dashboard-download-error.png", full_page=True)


async def test_autoload_changes_the_loaded_model(
    browser_page: Page, make_daemon: Callable[..., Daemon]
) -> None:
    page = browser_page
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="true").start()
    await download_and_wait(daemon, "tiny-small")
    await open_dashboard(page, daemon)
    await expect(page.locator("#loaded-name")).to_have_text("tiny-small")
    await expect(page.locator("#loaded-state")).to_have_text("Ready")
    await expect(card(page, "tiny-small")).to_contain_text("Downloaded, in use")

    await card(page, "tiny-a").get_by_role("button", name="Download tiny-a", exact=True).click()
    await expect(page.locator("#loaded-name")).to_have_text("tiny-a")
    await expect(page.locator("#loaded-state")).to_have_text("Ready")
    await expect(page.locator("#dl-title")).to_have_text("tiny-a downloaded")
    # The one that answered before can be loaded back with its button.
    await expect(
        card(page, "tiny-small").get_by_role("button", name="Load tiny-small", exact=True)
    ).to_be_visible()


async def test_load_then_chat_shows_an_answer(browser_page: Page, daemon: Daemon) -> None:
    page = browser_page
    await download_and_wait(daemon, "tiny-small")
    await open_dashboard(page, daemon)

    # Before a model is loaded the chat says why it cannot answer.
    await page.get_by_label("Message").fill("Hello?")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_role("alert").filter(has_text="No model is loaded")).to_have_text(
        "The model could not answer: No model is loaded. Load a downloaded model first."
    )

    await card(page, "tiny-small").get_by_role("button", name="Load tiny-small", exact=True).click()
    await expect(page.locator("#loaded-name")).to_have_text("tiny-small")
    await expect(page.locator("#loaded-state")).to_have_text("Ready")

    await page.get_by_label("Message").fill("What is a tort?")
    await page.get_by_role("button", name="Send").click()
    answer = page.get_by_role("log", name="Answer")
    await expect(page.get_by_role("button", name="Send")).to_be_enabled()
    await expect(answer).not_to_be_empty()
    await expect(answer).not_to_have_text("(The model answered with no text.)")
    await expect(page.locator("#error")).to_be_hidden()
    await page.screenshot(path=ARTIFACTS / "dashboard-chat.png", full_page=True)


async def test_reconnects_when_the_daemon_restarts(
    browser_page: Page,
    daemon: Daemon,
    make_daemon: Callable[..., Daemon],
    models: dict[str, ModelFile],
    hub_root: Path,
) -> None:
    page = browser_page
    await open_dashboard(page, daemon)
    await expect(card(page, "tiny-small")).to_contain_text("Not downloaded")
    port = daemon.url.rsplit(":", 1)[1]
    daemon.kill(signal.SIGKILL)
    await expect(connection(page)).to_have_text("Reconnecting…")

    # A file put in place while the daemon was down shows once the page is back.
    filename = models["tiny-small"].filename
    shutil.copy(hub_root / REPO / filename, daemon.data_dir / "models" / filename)
    await make_daemon(data_dir=daemon.data_dir, LAWCHATD_PORT=port).start()
    await expect(connection(page)).to_have_text("Connected", timeout=15_000)
    await expect(card(page, "tiny-small")).to_contain_text("Downloaded")


async def test_wrong_key_asks_for_the_key_again(browser_page: Page, daemon: Daemon) -> None:
    page = browser_page
    await open_dashboard(page, daemon, key="not-the-key")
    await expect(page.get_by_role("alert")).to_have_text(
        "The API key was not accepted. Enter it again."
    )
    await expect(page.get_by_label("API key")).to_be_visible()
    await expect(page.get_by_label("API key")).to_be_focused()
    await expect(connection(page)).to_have_text("Disconnected")

    await page.get_by_label("API key").fill(API_KEY)
    await page.get_by_role("button", name="Connect").click()
    await expect(connection(page)).to_have_text("Connected")
    await expect(page.get_by_role("alert")).to_be_hidden()
    # Kept for the tab: a reload does not ask again.
    await page.reload()
    await expect(connection(page)).to_have_text("Connected")
    await expect(page.get_by_label("API key")).to_be_hidden()


async def test_a_daemon_without_a_key_opens_without_asking(
    browser_page: Page, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = await make_daemon(LAWCHATD_API_KEY="").start()
    await browser_page.goto(daemon.url + "/")
    await expect(connection(browser_page)).to_have_text("Connected")
    await expect(card(browser_page, "tiny-a")).to_contain_text("Not downloaded")
    await expect(browser_page.get_by_label("API key")).to_be_hidden()


async def test_the_key_becomes_an_httponly_session_cookie(
    browser_page: Page, daemon: Daemon
) -> None:
    page = browser_page
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    await open_dashboard(page, daemon)
    await expect(card(page, "tiny-a")).to_contain_text("Not downloaded")
    # Nothing a script (or a proxy's log) could read: no key in storage, URLs or document.cookie.
    assert not [url for url in urls if "token=" in url or API_KEY in url], urls
    assert any(url.endswith("/ws/progress") for url in urls), urls
    stored = await page.evaluate("JSON.stringify([sessionStorage, localStorage, document.cookie])")
    assert stored == '[{},{},""]', stored
    (cookie,) = await page.context.cookies()
    assert cookie["name"] == "lawchatd_session" and cookie["httpOnly"], cookie
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/", cookie

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_label("API key")).to_be_visible()
    await expect(connection(page)).to_have_text("Disconnected")
    # The session is over on the daemon too, not just forgotten by this page.
    status = await page.evaluate("fetch('/models/available').then((r) => r.status)")
    assert status == 401
    await page.reload()
    await expect(page.get_by_label("API key")).to_be_visible()


async def test_server_text_is_shown_as_text_not_html(
    browser_page: Page,
    make_daemon: Callable[..., Daemon],
    models: dict[str, ModelFile],
    tmp_path: Path,
) -> None:
    label = '<img src=x onerror="window.pwned=1">'
    path = write_catalog(tmp_path / "hostile.toml", models)
    path.write_text(path.read_text().replace('"test model tiny-a"', f"'{label}'"))
    daemon = await make_daemon(LAWCHATD_CATALOG=str(path)).start()
    await open_dashboard(browser_page, daemon)
    await expect(card(browser_page, "tiny-a")).to_contain_text(label)
    assert await browser_page.locator("#models img").count() == 0
    assert await browser_page.evaluate("window.pwned") is None


async def test_verify_finds_a_flipped_byte_behind_a_restored_mtime(
    browser_page: Page, daemon: Daemon, models: dict[str, ModelFile]
) -> None:
    """Issue 23: the Verify button hashes the file again (POST /models/verify)."""
    page = browser_page
    await daemon.post("/models/download", {"model_variant": "tiny-a"})
    assert (await daemon.wait_done())["status"] == "completed"
    await open_dashboard(page, daemon)
    tiny_a = card(page, "tiny-a")
    verify = tiny_a.get_by_role("button", name="Hash tiny-a again to check it is intact")
    await verify.click()
    await expect(page.get_by_role("status").filter(has_text="tiny-a is intact")).to_be_visible()
    path = daemon.data_dir / "models" / models["tiny-a"].filename
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    await verify.click()
    await expect(page.get_by_role("alert").filter(has_text="changed on disk")).to_be_visible()
    await expect(tiny_a).to_contain_text("Not downloaded")
