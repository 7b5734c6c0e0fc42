"""The proxy and its errors where they are used: the engine in the daemon, the office mirror."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp

from lawchatd.fetch import FetchOptions
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.models import REPO
from lawchatd.testing.netproxy import Proxy
from lawchatd.testing.ports import free_port
from tests.test_network import clean_env, firm_mirror, make_settings, proxy  # noqa: F401 - fixtures


async def test_a_download_behind_a_refusing_proxy_ends_in_words(make_daemon) -> None:
    port = free_port()  # nothing listens there
    daemon = await make_daemon(LAWCHATD_PROXY=f"http://clerk:s3cr3t@127.0.0.1:{port}").start()
    status, reply = await daemon.post("/models/download", {"model_variant": "tiny-small"})
    assert status == 200, reply
    done = await daemon.wait_done()
    assert done["status"] == "error", done
    assert f"the proxy at http://127.0.0.1:{port} refused the connection" in done["error"]
    assert "s3cr3t" not in done["error"] and "s3cr3t" not in daemon.log()


async def test_an_office_mirror_reaches_its_upstream_through_the_proxy(
    tmp_path: Path,
    proxy: Proxy,  # noqa: F811
    firm_mirror: Mirror,  # noqa: F811
    models,
) -> None:
    """The upstream's name resolves at the proxy alone: only a proxied session reaches it."""
    options = FetchOptions(
        connections=2,
        max_retries=3,
        retry_backoff=0.05,
        stall_timeout=5.0,
    )
    (tmp_path / "office").mkdir()
    office = await start_mirror(
        tmp_path / "office",
        upstream=firm_mirror.url,
        fetch_options=options,
        network=make_settings(tmp_path, proxy=proxy.url),
    )
    try:
        model = models["tiny-small"]
        url = f"{office.url}/{REPO}/resolve/main/{model.filename}"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.read()
        assert hashlib.sha256(body).hexdigest() == model.sha256
        assert any("hub.lawfirm.invalid" in line for line in proxy.requests), proxy.requests
    finally:
        await office.runner.cleanup()
