"""The download session on a firm's network: a real proxy and a TLS mirror with the firm's CA."""

from __future__ import annotations

import hashlib
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from lawchatd.config import Settings
from lawchatd.errors import in_words as describe_error
from lawchatd.hub.session import client_session, proxy_for, redact, ssl_context
from lawchatd.mirror import create_mirror_app
from lawchatd.testing.daemon import daemon_env
from lawchatd.testing.mirror_server import Mirror, start_mirror
from lawchatd.testing.models import REPO, ModelFile
from lawchatd.testing.netproxy import Proxy, start_proxy
from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import served

FIRM_HOST = "hub.lawfirm.invalid"  # resolvable by the proxy alone (.invalid never resolves)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "SSL_CERT_FILE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def make_settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    server = await start_proxy(hosts={FIRM_HOST: "127.0.0.1"})
    yield server
    await server.close()


@pytest.fixture
async def firm_mirror(hub_root: Path, models: dict[str, ModelFile]) -> AsyncIterator[Mirror]:
    """The mirror under a name only the proxy knows; it redirects to that name too."""
    server = await start_mirror(hub_root, cdn_host=FIRM_HOST)
    server.url = server.url.replace("127.0.0.1", FIRM_HOST)
    yield server
    await server.runner.cleanup()


@pytest.fixture(scope="module")
def firm_ca() -> trustme.CA:
    return trustme.CA(organization_name="Law Firm Inspecting Proxy CA")


@pytest.fixture
async def tls_mirror(
    hub_root: Path, models: dict[str, ModelFile], firm_ca: trustme.CA
) -> AsyncIterator[str]:
    """The mirror over TLS, its certificate signed by the firm's own CA: `https://HOST:PORT`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    firm_ca.issue_cert(FIRM_HOST, "127.0.0.1").configure_cert(context)
    port = free_port()
    app = create_mirror_app(hub_root, cdn_base=f"https://{FIRM_HOST}:{port}")
    async with served(app, port, ssl_context=context):
        yield f"https://{FIRM_HOST}:{port}"


@pytest.fixture
def ca_file(tmp_path: Path, firm_ca: trustme.CA) -> Path:
    path = tmp_path / "firm-ca.pem"
    firm_ca.cert_pem.write_to_path(str(path))
    return path


async def fetch_sha256(settings: Settings, url: str) -> str:
    async with client_session(settings) as session, session.get(url) as resp:
        resp.raise_for_status()
        digest = hashlib.sha256()
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


async def fetch_error(settings: Settings, url: str) -> BaseException:
    with pytest.raises(aiohttp.ClientError) as caught:
        await fetch_sha256(settings, url)
    return caught.value


def resolve_url(base: str, model: ModelFile) -> str:
    return f"{base}/{REPO}/resolve/main/{model.filename}"


async def test_proxy_env_reaches_what_only_the_proxy_resolves(
    tmp_path: Path, proxy: Proxy, firm_mirror: Mirror, models, monkeypatch
) -> None:
    model = models["tiny-small"]
    url = resolve_url(firm_mirror.url, model)
    error = await fetch_error(make_settings(tmp_path), url)
    assert describe_error(error).startswith(f"the name {FIRM_HOST} cannot be resolved")

    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert await fetch_sha256(make_settings(tmp_path), url) == model.sha256
    # The resolve request and the redirect to the CDN route both went through the proxy.
    assert [r.split(" ")[0] for r in proxy.requests] == ["GET", "GET"]
    assert proxy.requests[0] == f"GET {url}"


async def test_lawchatd_proxy_with_credentials_wins_and_keeps_no_proxy(
    tmp_path: Path, firm_mirror: Mirror, mirror: Mirror, models, monkeypatch, caplog
) -> None:
    guarded = await start_proxy(hosts={FIRM_HOST: "127.0.0.1"}, credentials=("clerk", "s3cr3t"))
    try:
        model = models["tiny-small"]
        # HTTP_PROXY points nowhere: LAWCHATD_PROXY, for the daemon alone, wins over it.
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        settings = make_settings(
            tmp_path, proxy=guarded.url_with("clerk", "s3cr3t"), hf_endpoint=firm_mirror.url
        )
        with caplog.at_level(logging.INFO):
            sha = await fetch_sha256(settings, resolve_url(firm_mirror.url, model))
        assert sha == model.sha256
        assert len(guarded.requests) == 2
        assert f"through the proxy at {guarded.url}" in caplog.text
        assert "s3cr3t" not in caplog.text
        # NO_PROXY still sends the local mirror direct.
        assert await fetch_sha256(settings, resolve_url(mirror.url, model)) == model.sha256
        assert len(guarded.requests) == 2
        assert proxy_for(settings, mirror.url) is None
    finally:
        await guarded.close()


async def test_a_refusing_proxy_is_named(tmp_path: Path, firm_mirror: Mirror, models) -> None:
    port = free_port()  # nothing listens there
    settings = make_settings(tmp_path, proxy=f"http://clerk:s3cr3t@127.0.0.1:{port}")
    error = await fetch_error(settings, resolve_url(firm_mirror.url, models["tiny-small"]))
    assert describe_error(error) == f"the proxy at http://127.0.0.1:{port} refused the connection"


async def test_proxy_password_over_connect_and_a_wrong_one_explained(
    tmp_path: Path, tls_mirror: str, ca_file: Path, models
) -> None:
    guarded = await start_proxy(hosts={FIRM_HOST: "127.0.0.1"}, credentials=("clerk", "right"))
    try:
        settings = make_settings(
            tmp_path, proxy=guarded.url_with("clerk", "wr0ng"), ca_bundle=ca_file
        )
        error = await fetch_error(settings, resolve_url(tls_mirror, models["tiny-small"]))
        text = describe_error(error)
        assert text.startswith("the proxy asks for a user name and password (407)")
        assert "wr0ng" not in text
        # The right password goes in the CONNECT, and the tunnel carries TLS to the mirror.
        settings = make_settings(
            tmp_path, proxy=guarded.url_with("clerk", "right"), ca_bundle=ca_file
        )
        model = models["tiny-small"]
        assert await fetch_sha256(settings, resolve_url(tls_mirror, model)) == model.sha256
    finally:
        await guarded.close()


async def test_firm_ca_refused_without_bundle_accepted_with_it(
    tmp_path: Path, tls_mirror: str, ca_file: Path, proxy: Proxy, models, monkeypatch
) -> None:
    """The firm's two settings: HTTPS_PROXY and LAWCHATD_CA_BUNDLE (TLS through a CONNECT)."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    model = models["tiny-small"]
    url = resolve_url(tls_mirror, model)
    error = await fetch_error(make_settings(tmp_path), url)
    assert describe_error(error) == (
        f"the certificate of {FIRM_HOST} is signed by an unknown authority: set LAWCHATD_CA_BUNDLE"
    )
    assert await fetch_sha256(make_settings(tmp_path, ca_bundle=ca_file), url) == model.sha256
    assert proxy.requests[-1] == f"CONNECT {FIRM_HOST}:{tls_mirror.rsplit(':', 1)[1]}"


async def test_ssl_cert_file_adds_to_the_system_store(
    tmp_path: Path, tls_mirror: str, ca_file: Path, proxy: Proxy, models, monkeypatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    settings = make_settings(tmp_path)
    assert settings.ssl_cert_file == ca_file
    model = models["tiny-small"]
    assert await fetch_sha256(settings, resolve_url(tls_mirror, model)) == model.sha256
    system_cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
    monkeypatch.delenv("SSL_CERT_FILE")
    plain = ssl.create_default_context().cert_store_stats()["x509_ca"]
    if plain:  # a machine with a system store: it is kept, the firm's CA comes on top
        assert ssl_context(settings).cert_store_stats()["x509_ca"] >= plain + 1
    assert system_cas >= 1


def test_settings_reject_bad_network_values(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    bad = [
        {"ca_bundle": tmp_path / "missing.pem"},
        {"ca_bundle": not_pem},
        {"proxy": "https://clerk:s3cr3t@proxy:3128"},
    ]
    for values in bad:
        with pytest.raises(ValueError) as caught:
            make_settings(tmp_path, **values)
        assert "s3cr3t" not in str(caught.value)
    settings = make_settings(tmp_path, proxy="proxy.firm:3128")
    assert settings.proxy is not None
    assert settings.proxy.get_secret_value() == "http://proxy.firm:3128"
    assert "3128" not in repr(settings)


def test_redact_drops_user_and_password() -> None:
    assert redact("http://clerk:s3cr3t@proxy:3128") == "http://proxy:3128"
    assert redact("http://proxy:3128") == "http://proxy:3128"


async def test_daemon_downloads_through_the_proxy_alone(
    make_daemon, firm_mirror: Mirror, models
) -> None:
    """`lawchatd serve` with LAWCHATD_PROXY (user and password): the engine as it is today."""
    guarded = await start_proxy(hosts={FIRM_HOST: "127.0.0.1"}, credentials=("clerk", "s3cr3t"))
    try:
        daemon = await make_daemon(
            hub=firm_mirror, LAWCHATD_PROXY=guarded.url_with("clerk", "s3cr3t")
        ).start()
        status, reply = await daemon.post("/models/download", {"model_variant": "tiny-small"})
        assert status == 200, reply
        done = await daemon.wait_done()
        assert done["status"] == "completed", done
        assert guarded.requests, "the download did not go through the proxy"
        assert f"through the proxy at {guarded.url}" in daemon.log()
        assert "s3cr3t" not in daemon.log()
    finally:
        await guarded.close()


async def test_bandwidth_read_and_changed_at_run_time(make_daemon) -> None:
    daemon = await make_daemon(LAWCHATD_MAX_RATE="20MB", LAWCHATD_RATE_SCHEDULE="*=7MB").start()
    assert await daemon.get("/downloads/bandwidth") == {
        "max_rate": 7_000_000,
        "source": "schedule",
        "schedule": "*=7MB",
    }
    status, reply = await daemon.request("PUT", "/downloads/bandwidth", json={"max_rate": 1000})
    assert (status, reply["max_rate"], reply["source"]) == (200, 1000, "override")
    for bad in ({"max_rate": -1}, {"max_rate": "20MB"}, {"rate": 5}, [1], {"max_rate": True}):
        status, reply = await daemon.request("PUT", "/downloads/bandwidth", json=bad)
        assert status == 422 and isinstance(reply["detail"], str), (bad, reply)
    assert (await daemon.get("/downloads/bandwidth"))["max_rate"] == 1000
    status, reply = await daemon.request("PUT", "/downloads/bandwidth", json={"max_rate": None})
    assert (status, reply["max_rate"]) == (200, None)
    status, _ = await daemon.request(
        "PUT", "/downloads/bandwidth", json={"max_rate": 5}, headers={"Authorization": "Bearer x"}
    )
    assert status == 401


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("LAWCHATD_MAX_RATE", "10Mb", "ambiguous"),
        ("LAWCHATD_RATE_SCHEDULE", "weekdays=10MB", "not a day"),
        ("LAWCHATD_PROXY", "https://clerk:s3cr3t@proxy:3128", "http:// proxy URL"),
    ],
)
def test_bad_network_settings_stop_the_daemon_in_words(
    tmp_path: Path, catalog: Path, name: str, value: str, says: str
) -> None:
    env = daemon_env(tmp_path / "data", "http://127.0.0.1:9", catalog, **{name: value})
    done = subprocess.run(
        [sys.executable, "-m", "lawchatd", "serve"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert name in done.stderr.decode() and says in done.stderr.decode()
    assert "s3cr3t" not in done.stderr.decode()
