"""aiohttp apps on loopback, in the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


async def serve(
    app: web.Application,
    port: int = 0,
    *,
    ssl_context: Any = None,
    shutdown_timeout: float = 0.5,
) -> tuple[str, web.AppRunner]:
    """Run `app` on loopback (port 0: any free one): its URL, and the runner to clean up."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    return f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", runner


@contextlib.asynccontextmanager
async def served(app: web.Application, port: int = 0, **options: Any) -> AsyncIterator[str]:
    """`serve` for the length of a block."""
    url, runner = await serve(app, port, **options)
    try:
        yield url
    finally:
        await runner.cleanup()
