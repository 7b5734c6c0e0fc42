"""The dashboard's network block in a real Chromium: the bandwidth cap and the queue."""

from __future__ import annotations

from playwright.async_api import Page, expect

from lawchatd.testing.daemon import Daemon
from tests.test_dashboard import browser_page, open_dashboard, pytestmark  # noqa: F401


async def test_the_cap_is_shown_and_set_and_the_queue_managed(
    browser_page: Page,  # noqa: F811
    make_daemon,
) -> None:
    page = browser_page
    daemon: Daemon = await make_daemon(LAWCHATD_MAX_RATE="2MB").start()
    await open_dashboard(page, daemon)
    network = page.get_by_role("region", name="Bandwidth and queue")
    await expect(network).to_contain_text("Cap: 2.0 MB/s (from the settings)")

    await network.get_by_label("Bandwidth cap in MB/s (empty: unlimited)").fill("1.5")
    await network.get_by_role("button", name="Set cap").click()
    await expect(network).to_contain_text("Cap: 1.5 MB/s (set here)")
    assert (await daemon.get("/downloads/bandwidth"))["max_rate"] == 1_500_000

    # A running download (40 MB at 1.5 MB/s), and one queued behind it from the page.
    status, reply = await daemon.post("/models/download", {"model_variant": "big"})
    assert status == 200, reply
    await network.get_by_label("Queue a model behind the running download").select_option("tiny-a")
    await network.get_by_role("button", name="Add to queue").click()
    remove = network.get_by_role("button", name="Remove tiny-a from the queue")
    await expect(remove).to_be_visible()
    assert [d["model_variant"] for d in (await daemon.get("/downloads"))["downloads"]] == [
        "big",
        "tiny-a",
    ]
    await remove.click()
    await expect(network).to_contain_text("Nothing queued")
    assert [d["model_variant"] for d in (await daemon.get("/downloads"))["downloads"]] == ["big"]

    await network.get_by_label("Bandwidth cap in MB/s (empty: unlimited)").fill("")
    await network.get_by_role("button", name="Set cap").click()
    await expect(network).to_contain_text("Cap: unlimited (set here)")
    assert (await daemon.get("/downloads/bandwidth"))["max_rate"] is None
