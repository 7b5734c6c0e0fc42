"""The mirror app in the test's event loop, with fault injection and byte counts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lawchatd.mirror import create_mirror_app
from lawchatd.testing import mirror_faults
from lawchatd.testing.mirror_faults import FAULTS, STATS, Faults, MirrorStats
from lawchatd.testing.ports import free_port
from lawchatd.testing.servers import serve


@dataclass
class Mirror:
    url: str
    faults: Faults
    stats: MirrorStats
    runner: web.AppRunner

    def cdn_bytes(self) -> int:
        return self.stats.bytes_served

    async def fresh_count(self) -> None:
        """Reset the counters once responses to a client that went away have stopped writing."""
        last = -1
        while last != self.stats.bytes_served:
            last = self.stats.bytes_served
            await asyncio.sleep(0.2)
        self.stats.reset()


async def start_mirror(
    root: Path,
    *,
    token: str | None = None,
    cdn_host: str = "127.0.0.1",
    port: int | None = None,
    **options: Any,
) -> Mirror:
    """The mirror app with fault injection; `options` go to create_mirror_app (upstream=...)."""
    # The CDN base names the port, so it is chosen before the app exists.
    port = port or free_port()
    app = create_mirror_app(root, cdn_base=f"http://{cdn_host}:{port}", token=token, **options)
    mirror_faults.install(app)
    url, runner = await serve(app, port)
    return Mirror(url, app[FAULTS], app[STATS], runner)
