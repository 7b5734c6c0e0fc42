"""The current huggingface_hub (2.x) and its `hf` CLI against the mirror, with HF_ENDPOINT alone.

Each client runs in its own process, configured the way a user would: environment variables only.
The Hub behaviours relied on are described in huggingface_hub's own source: file_download.py
(get_hf_file_metadata reads X-Repo-Commit, X-Linked-Etag, X-Linked-Size), utils/_http.py
(same-host redirects are followed during HEAD), hf_api.py (ModelInfo, RepoFile, RepoFolder).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lawchatd.mirror import create_mirror_app
from lawchatd.testing import mirror_faults
from lawchatd.testing.mirror_faults import STATS, MirrorStats
from lawchatd.testing.servers import serve

pytest.importorskip("huggingface_hub")

REPO = "TheBloke/law-chat-GGUF"
GGUF = "law-chat.Q4_0.gguf"
TOKEN = "hf_mirror_secret"
HF = Path(sys.executable).with_name("hf")


@dataclass
class Hub:
    url: str
    root: Path
    files: dict[str, bytes]
    stats: MirrorStats
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LAWCHATD_"))}
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(self.home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY="127.0.0.1",
        )
        return env | extra

    async def python(self, code: str, **env: str) -> dict:
        """Run `code` with huggingface_hub imported as hh; it sets `out`, printed as JSON."""
        script = f"import json, huggingface_hub as hh\nout = {{}}\n{code}\nprint(json.dumps(out))"
        stdout = await _run([sys.executable, "-c", script], self.env(**env))
        return json.loads(stdout.splitlines()[-1])


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


async def _run(argv: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


async def _start(tmp_path: Path, **options: str) -> AsyncIterator[Hub]:
    root = tmp_path / "hub"
    repo = root / REPO
    (repo / "sub").mkdir(parents=True)
    files = {
        GGUF: b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + os.urandom(300_000),
        "README.md": b"# law-chat\n",
        "config.json": b'{"model_type": "llama"}\n',
        "sub/notes.txt": b"notes\n",
    }
    for name, data in files.items():
        (repo / name).write_bytes(data)
    app = mirror_faults.install(create_mirror_app(root, **options))
    url, runner = await serve(app)
    try:
        yield Hub(url, root, files, app[STATS], tmp_path / "hf-home")
    finally:
        await runner.cleanup()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async for started in _start(tmp_path):
        yield started


async def test_hf_hub_download_lfs_and_small_files_then_from_cache(hub: Hub) -> None:
    code = f"""
for name in ({GGUF!r}, "README.md", "config.json"):
    out[name] = hh.hf_hub_download({REPO!r}, name)
"""
    paths = await hub.python(code)
    for name, path in paths.items():
        assert _read(path) == hub.files[name]
    snapshot = Path(paths[GGUF]).parent
    commit = snapshot.name
    assert (snapshot.parent.parent / "refs" / "main").read_text() == commit
    blobs = {p.resolve().name for p in snapshot.iterdir() if p.is_file()}
    # LFS blobs are named by sha256, small ones by git blob oid: the Hub's etags.
    assert hashlib.sha256(hub.files[GGUF]).hexdigest() in blobs
    served = hub.stats.bytes_served
    again = await hub.python(f"out['p'] = hh.hf_hub_download({REPO!r}, {GGUF!r})")
    assert again["p"] == paths[GGUF] and hub.stats.bytes_served == served  # from the cache


async def test_revisions_the_commit_and_nothing_else(hub: Hub) -> None:
    code = f"""
info = hh.model_info({REPO!r})
out["sha"] = info.sha
out["by_commit"] = hh.hf_hub_download({REPO!r}, "README.md", revision=info.sha)
for rev in ("v1.0", "0" * 40):
    try:
        hh.hf_hub_download({REPO!r}, "README.md", revision=rev)
        out[rev] = "downloaded"
    except hh.errors.RevisionNotFoundError:
        out[rev] = "RevisionNotFound"
"""
    out = await hub.python(code)
    assert f"/snapshots/{out['sha']}/" in out["by_commit"]
    assert out["v1.0"] == out["0" * 40] == "RevisionNotFound"
    refs = hub.home / "hub" / f"models--{REPO.replace('/', '--')}" / "refs"
    assert not (refs / "v1.0").exists()


async def test_model_info_repo_exists_and_tree(hub: Hub) -> None:
    code = f"""
info = hh.model_info({REPO!r}, files_metadata=True)
out["sha"] = info.sha
out["siblings"] = {{s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings}}
out["exists"] = [hh.repo_exists({REPO!r}), hh.repo_exists("TheBloke/none")]
top = list(hh.list_repo_tree({REPO!r}))
out["top"] = {{f.path: type(f).__name__ for f in top}}
out["sub"] = [f.path for f in hh.list_repo_tree({REPO!r}, path_in_repo="sub")]
out["all"] = sorted(f.path for f in hh.list_repo_tree({REPO!r}, recursive=True))
out["lfs"] = {{f.path: bool(f.lfs) for f in top if hasattr(f, "lfs")}}
"""
    out = await hub.python(code)
    sha256 = hashlib.sha256(hub.files[GGUF]).hexdigest()
    assert out["siblings"] == {
        name: [len(data), sha256 if name == GGUF else None] for name, data in hub.files.items()
    }
    assert out["exists"] == [True, False]
    assert out["top"] == {
        GGUF: "RepoFile", "README.md": "RepoFile", "config.json": "RepoFile", "sub": "RepoFolder"
    }  # fmt: skip
    assert out["sub"] == ["sub/notes.txt"]
    assert out["all"] == sorted([*hub.files, "sub"])
    assert out["lfs"] == {GGUF: True, "README.md": False, "config.json": False}


async def test_snapshot_download_gets_every_file(hub: Hub, tmp_path: Path) -> None:
    out = await hub.python(f"out['dir'] = hh.snapshot_download({REPO!r})")
    for name, data in hub.files.items():
        assert (Path(out["dir"]) / name).read_bytes() == data


async def test_hf_download_cli(hub: Hub, tmp_path: Path) -> None:
    target = tmp_path / "out"
    await _run([str(HF), "download", REPO, "--local-dir", str(target)], hub.env())
    for name, data in hub.files.items():
        assert (target / name).read_bytes() == data
    one = await _run([str(HF), "download", REPO, GGUF, "--quiet"], hub.env())
    assert _read(one.strip().splitlines()[-1]) == hub.files[GGUF]


async def test_a_token_mirror_works_with_hf_token_and_refuses_without(tmp_path: Path) -> None:
    async for hub in _start(tmp_path, token=TOKEN):
        code = f"""
try:
    hh.hf_hub_download({REPO!r}, {GGUF!r})
    out["without"] = "downloaded"
except hh.errors.GatedRepoError:
    out["without"] = "GatedRepo"
"""
        assert (await hub.python(code))["without"] == "GatedRepo"
        out = await hub.python(f"out['p'] = hh.hf_hub_download({REPO!r}, {GGUF!r})", HF_TOKEN=TOKEN)
        assert _read(out["p"]) == hub.files[GGUF]


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_hf_download_through_a_pull_through_office_mirror(
    hub: Hub, tmp_path: Path, token: str | None
) -> None:
    office_dir = tmp_path / "office"
    office_dir.mkdir()
    url, runner = await serve(create_mirror_app(office_dir, upstream=hub.url, token=token))
    try:
        target = tmp_path / "out"
        argv = [str(HF), "download", REPO, "--local-dir", str(target)]
        await _run(argv, hub.env(HF_ENDPOINT=url, **({"HF_TOKEN": token} if token else {})))
        for name, data in hub.files.items():
            assert (target / name).read_bytes() == data
            assert (office_dir / REPO / name).read_bytes() == data  # kept for the next office
        # The upstream sent every file once.
        assert hub.stats.bytes_served == sum(len(data) for data in hub.files.values())
    finally:
        await runner.cleanup()


async def test_paths_info_commits_auth_check_and_hffilesystem(hub: Hub) -> None:
    code = f"""
api = hh.HfApi()
out["paths"] = [type(p).__name__ for p in api.get_paths_info({REPO!r}, ["README.md", "sub", "none"])]
out["commits"] = [c.commit_id for c in hh.list_repo_commits({REPO!r})]
out["sha"] = hh.model_info({REPO!r}).sha
hh.auth_check({REPO!r})
fs = hh.HfFileSystem()
out["ls"] = sorted(fs.ls({REPO!r}, detail=False))
out["readme"] = fs.open({REPO!r} + "/README.md").read().decode()
out["exists"] = [hh.file_exists({REPO!r}, "README.md"), hh.file_exists({REPO!r}, "none")]
"""
    out = await hub.python(code)
    assert out["paths"] == ["RepoFile", "RepoFolder"]
    assert out["commits"] == [out["sha"]]
    assert out["ls"] == sorted(f"{REPO}/{p}" for p in (GGUF, "README.md", "config.json", "sub"))
    assert out["readme"] == hub.files["README.md"].decode()
    assert out["exists"] == [True, False]
