"""The dashboard as an office manager runs the models with it, in a real headless Chromium
against a real daemon: unload, delete (refused while loaded), the queue offered on a busy
Download, a lost daemon dimmed, failed downloads and loads on their cards, the history.

Screenshots at desktop and phone width go to test-artifacts/office-*.png.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.mirror_server import Mirror
from tests.test_dashboard import (  # noqa: F401  (browser_page is a fixture)
    ARTIFACTS,
    browser_page,
    card,
    connection,
    download_and_wait,
    open_dashboard,
)

pytest.importorskip("playwright.async_api")
from playwright.async_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.timeout(90)
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}


async def shots(page: Page, name: str) -> None:
    """Desktop and phone width; nothing may stick out sideways on the phone."""
    await page.screenshot(path=ARTIFACTS / f"office-{name}.png", full_page=True)
    await page.set_viewport_size(PHONE)
    await page.screenshot(path=ARTIFACTS / f"office-{name}-375px.png", full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await page.set_viewport_size(DESKTOP)


def accept_dialogs(page: Page) -> None:
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))


async def test_unload_delete_queue_and_a_lost_daemon(
    browser_page: Page,  # noqa: F811
    make_daemon: Callable[..., Daemon],
    mirror: Mirror,
) -> None:
    page = browser_page
    accept_dialogs(page)
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="true").start()
    await download_and_wait(daemon, "tiny-small")  # autoload: it answers
    await open_dashboard(page, daemon)
    await expect(page.locator("#loaded-name")).to_have_text("tiny-small")
    await expect(page.locator("#loaded-memory")).to_have_text(re.compile(r"^[\d.]+ [kMG]B$"))
    await expect(page.locator("#loaded-context")).to_have_text("256 tokens")
    await expect(page.locator("#disk")).to_contain_text(re.compile(r"Models use .* free in "))

    # Delete is refused in words while the model answers.
    tiny_small = card(page, "tiny-small")
    await tiny_small.get_by_role("button", name="Delete tiny-small", exact=True).click()
    await expect(page.locator("#error")).to_have_text(
        "Could not delete tiny-small: tiny-small is loaded and answers questions: "
        "unload it first, then delete it."
    )
    await shots(page, "delete-refused")

    # Unload: the page follows at once (the `unloaded` event), chat has nothing to answer with.
    await page.get_by_role("button", name="Unload tiny-small", exact=True).click()
    await expect(page.locator("#loaded-state")).to_have_text("No model loaded")
    await expect(page.locator("#notice")).to_contain_text("tiny-small was unloaded")
    await expect(page.locator("#loaded-facts")).to_be_hidden()
    await expect(
        tiny_small.get_by_role("button", name="Load tiny-small", exact=True)
    ).to_be_visible()

    # Now it can be deleted.
    await tiny_small.get_by_role("button", name="Delete tiny-small", exact=True).click()
    await expect(page.locator("#notice")).to_contain_text("tiny-small was deleted")
    await expect(tiny_small).to_contain_text("Not downloaded")
    await expect(tiny_small.get_by_role("button", name="Delete tiny-small")).to_be_hidden()

    # Before a download the card says what happens when it completes (LAWCHATD_AUTOLOAD).
    await expect(card(page, "tiny-a")).to_contain_text("When downloaded it is loaded")

    # Download while another runs: the button queues it, no red 409.
    mirror.faults.rate = 600_000
    await card(page, "tiny-a").get_by_role("button", name="Download tiny-a", exact=True).click()
    await expect(page.locator("#dl-title")).to_have_text("Downloading tiny-a")
    queue_b = card(page, "tiny-b").get_by_role("button", name="Queue tiny-b", exact=True)
    await expect(queue_b).to_have_text("Add to queue")
    await queue_b.click()
    await expect(card(page, "tiny-b")).to_contain_text("Queued (number 1)")
    await expect(page.locator("#queue")).to_contain_text("tiny-b")
    await expect(page.locator("#error")).to_be_hidden()
    offered = await page.locator("#queue-select option").all_text_contents()
    assert "tiny-a" not in offered and "tiny-b" not in offered, offered
    await expect(page.locator("#dl-speed")).to_have_text(re.compile(r"MB/s$"))

    # The daemon dies mid-download: the page says so, dims and disables the stale picture.
    daemon.kill()
    await expect(page.locator("#offline")).to_be_visible()
    await expect(connection(page)).to_contain_text("Reconnecting")
    await expect(page.locator("#dl-speed")).to_have_text("–")
    await expect(page.locator("#dl-title")).to_have_text("Downloading tiny-a (last known state)")
    await expect(page.locator("#dl-eta")).to_have_text("–")
    dashboard = page.locator("#dashboard")
    assert await dashboard.evaluate("main => main.inert")
    assert float(await dashboard.evaluate("main => getComputedStyle(main).opacity")) < 0.7
    await shots(page, "disconnected")


async def test_failed_cards_and_the_history(
    browser_page: Page,  # noqa: F811
    make_daemon: Callable[..., Daemon],
    mirror: Mirror,
) -> None:
    page = browser_page
    daemon = await make_daemon(LAWCHATD_AUTOLOAD="true").start()
    await open_dashboard(page, daemon)
    await expect(page.locator("#history-empty")).to_be_visible()

    # A download whose bytes do not match: the card says so, the words say what to do.
    mirror.faults.corrupt_at = 3_000_000
    tiny_a = card(page, "tiny-a")
    await tiny_a.get_by_role("button", name="Download tiny-a", exact=True).click()
    await expect(page.locator("#dl-title")).to_have_text("The download of tiny-a failed")
    await expect(tiny_a).to_have_attribute("data-state", "failed")
    await expect(tiny_a).to_contain_text("Not downloaded: its last download failed")
    failure = page.locator("#dl-error")
    await expect(failure).to_contain_text(
        "The file received does not match the checksum the publisher gave; it was deleted. "
        "Try again; if it happens again the source may be damaged."
    )
    detail = failure.locator("details code")
    await expect(detail).to_be_hidden()  # the hashes are one click away
    await failure.get_by_text("Technical detail").click()
    await expect(detail).to_contain_text("sha256 mismatch")
    await expect(page.locator("#notice")).not_to_contain_text("started")
    history = page.locator("#history-rows tr")
    await expect(history.first).to_contain_text("tiny-a")
    await expect(history.first).to_contain_text("Failed")
    await expect(history.first).to_contain_text("admin")

    # A file that downloads and verifies but cannot be loaded: no Load button offered.
    mirror.faults.corrupt_at = None
    broken = card(page, "tiny-broken")
    await broken.get_by_role("button", name="Download tiny-broken", exact=True).click()
    await expect(broken).to_contain_text("could not be loaded")
    await expect(broken).to_have_attribute("data-state", "failed")
    await expect(broken.get_by_role("button", name="Load tiny-broken")).to_be_hidden()
    await expect(broken.get_by_role("button", name="Delete tiny-broken")).to_be_visible()
    await expect(page.locator("#notice")).to_have_text(
        "tiny-broken is downloaded and verified, but it could not be loaded (see above)."
    )
    await expect(page.locator("#error")).to_contain_text("Delete it and download it again")
    await expect(history).to_have_count(2)
    await expect(history.first).to_contain_text("Downloaded and verified")
    # tiny-a's card still says its last download failed (from the history).
    await expect(tiny_a).to_have_attribute("data-state", "failed")
    await expect(history.last.locator("td").nth(4)).to_have_text(re.compile(r"(under )?\d+ s$"))
    await shots(page, "failed-and-history")


async def test_chat_is_a_conversation(browser_page: Page, daemon: Daemon) -> None:  # noqa: F811
    page = browser_page
    await download_and_wait(daemon, "tiny-small")
    await open_dashboard(page, daemon)
    await card(page, "tiny-small").get_by_role("button", name="Load tiny-small", exact=True).click()
    await expect(page.locator("#loaded-state")).to_have_text("Ready")
    sent: list[dict] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None,
    )
    send = page.get_by_role("button", name="Send")
    for question in ("What is a tort?", "And a contract?"):
        await page.get_by_label("Message").fill(question)
        await send.click()
        await expect(page.get_by_role("button", name="Stop")).to_be_hidden()
        await expect(send).to_be_enabled()
    log = page.get_by_role("log", name="Answer")
    await expect(log.locator(".turn.you")).to_have_text(["What is a tort?", "And a contract?"])
    # The second question went with the first and its answer, and no 64-token cap.
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"], sent
    assert "max_tokens" not in sent[1]
    await page.get_by_role("button", name="New conversation").click()
    await expect(log).to_be_hidden()
