"""Issue 21 in the browser: a person logs in with their own key and sees what their role
allows; an admin's "People and keys" panel lists keys and revokes one (real Chromium, real
daemon, keys made with the real `lawchatd keys add`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lawchatd.testing.daemon import API_KEY, Daemon, clean_env

CHROMIUM = Path("/usr/bin/chromium")
pytest.importorskip("playwright.async_api", reason="pip install playwright")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's Chromium at /usr/bin/chromium", allow_module_level=True)

from playwright.async_api import Page, async_playwright, expect  # noqa: E402

pytestmark = pytest.mark.timeout(90)
expect.set_options(timeout=10_000)
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def add_key(daemon: Daemon, name: str, role: str) -> str:
    env = clean_env(LAWCHATD_DATA_DIR=str(daemon.data_dir), LAWCHATD_ENV_FILE="/nonexistent")
    done = subprocess.run(
        [sys.executable, "-m", "lawchatd", "keys", "add", name, "--role", role],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        opened = await browser.new_page(viewport={"width": 1280, "height": 900})
        opened.on("pageerror", lambda exc: errors.append(str(exc)))
        yield opened
        await browser.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


async def log_in(page: Page, daemon: Daemon, key: str) -> None:
    await page.goto(daemon.url + "/")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Connect").click()
    await expect(page.locator("#connection")).to_have_text("Connected")


async def test_a_user_sees_no_admin_actions(page: Page, daemon: Daemon) -> None:
    key = add_key(daemon, "anna", "user")
    await log_in(page, daemon, key)
    await expect(page.locator("#who")).to_have_text("anna (chat and read-only)")
    await expect(page.get_by_role("heading", name="tiny-a", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Download")).to_have_count(0)
    for hidden in ("Download", "Set cap", "Add to queue"):
        for button in await page.get_by_role("button", name=hidden).all():
            await expect(button).to_be_hidden()
    await expect(page.get_by_role("heading", name="People and keys")).to_have_count(0)
    await expect(page.get_by_role("button", name="Send")).to_be_visible()  # chat is theirs


async def test_the_admin_panel_revokes_a_key(page: Page, daemon: Daemon) -> None:
    victor = add_key(daemon, "victor", "viewer")
    await log_in(page, daemon, API_KEY)
    panel = page.locator("#people")
    await expect(panel.get_by_role("heading", name="People and keys")).to_be_visible()
    row = panel.get_by_role("listitem").filter(has_text="victor")
    await expect(row).to_contain_text("viewer")
    await row.get_by_role("button", name="Revoke").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#notice")).to_have_text("The key of victor was revoked.")
    status = await page.evaluate(
        f"fetch('/models/available', {{headers: {{Authorization: 'Bearer {victor}'}}}})"
        ".then((r) => r.status)"
    )
    assert status == 401

    await panel.get_by_label("Name").fill("bo")
    await panel.get_by_role("button", name="Add key").click()
    await expect(panel.locator("#people-new-key")).to_contain_text("Key for bo")
    await expect(panel.get_by_role("listitem").filter(has_text="bo ·")).to_contain_text("user")
