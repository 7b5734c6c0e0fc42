"""Running the daemon: bind, say where, wait for a signal, stop in order."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from lawchatd import __version__
from lawchatd.config import Settings
from lawchatd.logs import MaskingAccessLogger
from lawchatd.web.app import create_app

log = logging.getLogger("lawchatd")
SHUTDOWN_TIMEOUT = 5.0  # SIGTERM must end in an exit well within systemd's 10 s


async def serve(settings: Settings) -> None:
    settings.refuse_unsafe_bind()
    app = create_app(settings)
    runner = web.AppRunner(
        app, access_log_class=MaskingAccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        for host, port, *_ in (addr for addr in runner.addresses if isinstance(addr, tuple)):
            log.info("lawchatd %s listening on http://%s:%d", __version__, host, port)
        await _wait_for_stop_signal()
        log.info("stopping: downloads keep their partial files and resume at the next start")
    finally:
        await runner.cleanup()
    log.info("stopped")


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
