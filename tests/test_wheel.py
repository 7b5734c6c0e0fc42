"""The package as a user installs it: a wheel in a fresh venv serves the dashboard.

The wheel is built from a copy of the checkout and installed without its dependencies into a
new venv, which borrows them from this environment through a .pth file (llama-cpp-python is not
compiled again). The daemon then runs from outside the checkout with no PYTHONPATH, so the
checkout's own files cannot be what answers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import aiohttp
import pytest
import setuptools

from lawchatd.testing.daemon import Daemon, serve_env

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("lawchatd", "static", "pyproject.toml", "README.md")

pytestmark = pytest.mark.timeout(180)


def copy_checkout(dest: Path) -> Path:
    """What a wheel is built from; a copy, so the build leaves nothing behind in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def build_wheel(source: Path, out: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    # A setuptools that writes wheels on its own (>= 70.1) or the `wheel` package: build offline.
    # Otherwise pip fetches the build backend from the package index, as `pip install .` would.
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel"):
        command.append("--no-build-isolation")
    subprocess.run([*command, str(source)], check=True, timeout=120, cwd=out)
    (wheel,) = out.glob("lawchatd-*.whl")
    return wheel


def fresh_venv(folder: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and this environment's packages behind it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=120,
        # A PYTHONPATH with this checkout on it makes pip see lawchatd installed already.
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Lines of a .pth only extend sys.path: the .pth files over there (such as the editable
    # install of this checkout) are not run, and the venv's own site-packages comes first.
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "borrowed-dependencies.pth").write_text("\n".join(sorted(paths)) + "\n")
    return python


async def test_a_wheel_in_a_fresh_venv_serves_the_dashboard(tmp_path: Path) -> None:
    wheel = build_wheel(copy_checkout(tmp_path / "src"), tmp_path)
    python = fresh_venv(tmp_path / "venv", wheel)
    env = serve_env(tmp_path / "data", LAWCHATD_HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("PYTHONPATH", None)
    imported = subprocess.run(
        [str(python), "-c", "import lawchatd; print(lawchatd.__file__)"],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert Path(imported).is_relative_to(tmp_path / "venv"), imported

    daemon = Daemon(
        tmp_path / "data",
        env,
        tmp_path / "daemon.log",
        command=[str(tmp_path / "venv" / "bin" / "lawchatd"), "serve"],
        cwd=tmp_path,
    )
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(daemon.url + "/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] == "ok"
            async with session.get(daemon.url + "/") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                page = await resp.text()
            assert "/static/" in page, page[:500]
            async with session.get(daemon.url + "/static/style.css") as resp:
                assert resp.status == 200
        assert "no dashboard" not in daemon.log()
    finally:
        await daemon.close()
