"""Helpers only the tests use, over the shared machinery in `lawchatd.testing`."""

from __future__ import annotations

import json
from pathlib import Path

from lawchatd.testing.daemon import Daemon
from lawchatd.testing.models import ModelFile


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def start_download(daemon: Daemon, variant: str, **body) -> dict:
    """POST /models/download and insist it was accepted."""
    status, reply = await daemon.post("/models/download", {"model_variant": variant, **body})
    assert status == 200, reply
    return reply


def final_file(daemon: Daemon, model: ModelFile) -> Path:
    return daemon.data_dir / "models" / model.filename


def part_file(daemon: Daemon, model: ModelFile) -> Path:
    return daemon.data_dir / "models" / f"{model.filename}.part"
