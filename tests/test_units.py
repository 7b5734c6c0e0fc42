"""The pieces that need no server: settings, catalog, store migrations, odd Hub replies."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import aiohttp
import pytest
from aioresponses import aioresponses

from lawchatd.config import Settings
from lawchatd.downloads.catalog import BUILTIN, Catalog, CatalogError, ModelSpec, load_catalog
from lawchatd.hub.client import HubClient, HubError, TransientHubError
from lawchatd.process.startup import StartupError, refuse_unsafe_bind
from lawchatd.state.store import SCHEMA_VERSION, DownloadRow, Part, Store

HUB = "https://hub.example"
SPEC = ModelSpec("v", "org/repo", "model.gguf", 100, "a" * 64)
RESOLVE = f"{HUB}/org/repo/resolve/main/model.gguf"


def test_builtin_catalog_matches_the_upstream_facts():
    catalog = load_catalog(None)
    assert catalog.variants == [
        "law-chat-q2_k", "law-chat-q3_k_m", "law-chat-q4_0", "law-chat-q5_0", "law-chat-q8_0",
    ]  # fmt: skip
    q4 = catalog.get("law-chat-q4_0")
    assert q4.filename == "law-chat.Q4_0.gguf" and q4.size == 3825812864
    assert q4.sha256.startswith("9f3794e5") and q4.repo == "TheBloke/law-chat-GGUF"
    assert all(spec.revision == "main" for spec in BUILTIN)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"filename": "a/b.gguf"}, "plain file name"),
        ({"filename": "..\\x.gguf"}, "plain file name"),
        ({"filename": ".hidden"}, "plain file name"),
        ({"filename": "x.gguf.part"}, ".part"),
        ({"variant": "a b"}, "letters"),
        ({"repo": "../x"}, "owner/name"),
        ({"revision": "../../x"}, "revision"),
        ({"size": 0}, "positive"),
        ({"sha256": "XYZ"}, "64 lowercase hex"),
    ],
)
def test_catalog_refuses_entries_that_could_escape_or_lie(change, words):
    with pytest.raises(CatalogError, match=words):
        Catalog([ModelSpec(**{**SPEC.__dict__, **change})])


def test_catalog_toml_errors_are_explained(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[models]]\nvariant = "x"\n')
    with pytest.raises(CatalogError, match="missing"):
        load_catalog(path)
    path.write_text("not toml [")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.toml")
    entry = '[[models]]\nvariant = "x"\nrepo = "a/b"\nfilename = "x.gguf"\nsize = 1\n'
    path.write_text(entry * 2)
    with pytest.raises(CatalogError, match="appears twice"):
        load_catalog(path)


def test_settings_read_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LAWCHATD_PORT", "9001")
    monkeypatch.setenv("LAWCHATD_CONNECTIONS", "2")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local/")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    settings = Settings(_env_file=None)
    assert settings.port == 9001 and settings.connections == 2
    assert settings.hf_endpoint == "http://mirror.local"
    assert settings.hf_token.get_secret_value() == "hf_x"
    assert settings.data_dir == tmp_path and settings.models_dir == tmp_path / "models"
    assert "hf_x" not in repr(settings)


def test_settings_env_file(tmp_path, monkeypatch):
    env_file = tmp_path / "lawchatd.env"
    env_file.write_text("LAWCHATD_AUTOLOAD=false\nLAWCHATD_API_KEY=k\n")
    settings = Settings(_env_file=env_file)
    assert settings.autoload == "never" and settings.api_key.get_secret_value() == "k"


@pytest.mark.parametrize(
    ("host", "refused"), [("127.0.0.1", False), ("::1", False), ("0.0.0.0", True), ("lan", True)]
)
def test_public_bind_needs_a_key(host, refused):
    settings = Settings(_env_file=None, host=host)
    if refused:
        with pytest.raises(StartupError, match="without an API key"):
            refuse_unsafe_bind(settings)
        refuse_unsafe_bind(Settings(_env_file=None, host=host, api_key="k"))
    else:
        refuse_unsafe_bind(settings)


async def test_store_round_trip_and_schema_version(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    assert await store.schema_version() == SCHEMA_VERSION
    row = DownloadRow("v", "f.gguf", "downloading", total_size=10)
    await store.save(row, [Part(0, 5, 5), Part(5, 10, 2)])
    row.downloaded_size = 7
    await store.save(row)  # a row update keeps its parts
    assert (await store.get("v")).downloaded_size == 7
    assert await store.parts("v") == [Part(0, 5, 5), Part(5, 10, 2)]
    await store.set_meta("active_variant", "v")
    await store.close()

    reopened = await Store.open(tmp_path / "db.sqlite3")
    assert await reopened.get_meta("active_variant") == "v"
    assert (await reopened.all())[0].status == "downloading"
    await reopened.close()


async def test_store_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer lawchatd"):
        await Store.open(path)


class CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required `stream_writer` (its issue #289)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


async def resolve_with_reply(status: int, headers: dict[str, str]):
    """What HubClient.resolve makes of one reply of the Hub to its HEAD."""
    with aioresponses() as upstream:
        upstream.head(RESOLVE, response_class=CompatResponse, status=status, headers=headers)
        async with aiohttp.ClientSession() as session:
            return await HubClient(session, HUB, None).resolve(SPEC.repo, "main", SPEC.filename)


async def test_resolve_reads_the_redirect_without_following_it():
    resolved = await resolve_with_reply(
        302,
        {
            "Location": "https://cdn.example/blob?sig=1",
            "X-Repo-Commit": "c" * 40,
            "X-Linked-Etag": '"' + "a" * 64 + '"',
            "X-Linked-Size": "100",
        },
    )
    assert str(resolved.url) == "https://cdn.example/blob?sig=1"
    assert (resolved.commit, resolved.sha256, resolved.size) == ("c" * 40, "a" * 64, 100)


async def test_a_relative_location_is_resolved_against_the_hub():
    resolved = await resolve_with_reply(307, {"Location": "/api/resolve-cache/x"})
    assert str(resolved.url) == f"{HUB}/api/resolve-cache/x"


async def test_a_redirect_without_linked_size_has_no_size():
    # The Content-Length of a 302 is its own (empty) body's, not the file's.
    resolved = await resolve_with_reply(302, {"Location": "/cdn/x", "Content-Length": "0"})
    assert resolved.size is None


@pytest.mark.parametrize(
    ("status", "code", "error", "words"),
    [
        (401, "GatedRepo", HubError, "gated"),
        (403, "", HubError, "LAWCHATD_HF_TOKEN"),
        (404, "RepoNotFound", HubError, "does not exist"),
        (404, "EntryNotFound", HubError, "was not found"),
        (404, "RevisionNotFound", HubError, "revision"),
        (502, "", TransientHubError, "502"),
        (429, "", TransientHubError, "429"),
    ],
)
async def test_hub_errors_in_words(status, code, error, words):
    with pytest.raises(error, match=words):
        await resolve_with_reply(status, {"X-Error-Code": code} if code else {})


def test_the_token_goes_to_the_hub_host_only():
    from yarl import URL

    client = HubClient(None, HUB, "hf_secret")  # type: ignore[arg-type]
    assert client.headers_for(URL(RESOLVE)) == {"Authorization": "Bearer hf_secret"}
    assert client.headers_for(URL("https://cdn.example/blob")) == {}
    assert client.headers_for(URL("http://hub.example/x")) == {}  # another scheme is another origin


def test_error_texts_drop_presigned_url_signatures():
    from lawchatd.errors import in_words

    text = in_words(Exception("url='https://cdn.example/b?X-Amz-Signature=s3cret&Expires=9'"))
    assert "s3cret" not in text and "https://cdn.example/b?..." in text
