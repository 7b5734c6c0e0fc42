"""Running the daemon: bind, say where, wait for a signal, stop in order."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from lawchatd import __version__
from lawchatd.config import Settings
from lawchatd.process.httpserver import harden
from lawchatd.process.logs import MaskingAccessLogger
from lawchatd.process.sdnotify import Notifier, keep_watchdog_fed, relay_status, watchdog_interval
from lawchatd.process.startup import classify, listen_error
from lawchatd.web.app import create_app
from lawchatd.web.keys import PROGRESS

log = logging.getLogger("lawchatd")
SHUTDOWN_TIMEOUT = 3.0  # open requests (a chat stream) get this long; the rest of 10 s is cleanup
CLEANUP_TIMEOUT = 5.0  # a failed start still releases the database within this


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; a known start-up failure is raised as a StartupError."""
    try:
        app = create_app(settings)
    except Exception as exc:
        raise _named(exc, settings) from None
    runner = web.AppRunner(
        app,
        access_log_class=MaskingAccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        # A client that hangs up cancels its handler, so a queued chat request leaves the queue.
        handler_cancellation=True,
        # aiohttp closes a connection that has not sent a whole request head within this of
        # connecting or of its last answer: the slowloris defence (with the connection cap).
        keepalive_timeout=settings.header_timeout,
        # No route accepts a compressed body (415), so none is ever inflated: a 1 MiB gzip of
        # 1 GiB of zeros costs nothing. A body left unread (a refusal) is not read on either:
        # the connection closes after the answer instead of draining it for 10 s.
        auto_decompress=False,
        lingering_time=0,
    )
    notifier = Notifier()
    helpers: list[asyncio.Task] = []
    failed = False
    try:
        try:
            await _listen(runner, settings)
        except Exception:
            failed = True
            raise
        for host, port, *_ in (addr for addr in runner.addresses if isinstance(addr, tuple)):
            log.info("lawchatd %s listening on http://%s:%d", __version__, host, port)
        # READY only once the socket accepts: systemd starts dependants right after.
        notifier.send("READY=1", "STATUS=ready")
        helpers.append(asyncio.create_task(relay_status(notifier, app[PROGRESS])))
        if interval := watchdog_interval():
            helpers.append(asyncio.create_task(keep_watchdog_fed(notifier, interval)))
        await _wait_for_stop_signal()
        notifier.send("STOPPING=1", "STATUS=stopping")
        log.info("stopping: downloads keep their partial files and resume at the next start")
    finally:
        for task in helpers:
            task.cancel()
        try:
            await asyncio.wait_for(runner.cleanup(), CLEANUP_TIMEOUT + SHUTDOWN_TIMEOUT)
        except TimeoutError:
            # Past the budget: what is saved is crash-safe anyway (the next start resumes);
            # exiting now beats systemd's SIGKILL.
            log.warning("stopping took too long; exiting without waiting for the rest")
        except Exception:
            if not failed:
                raise
            log.exception("cleaning up after the failed start failed too")
        finally:
            notifier.close()
    log.info("stopped")


async def _listen(runner: web.AppRunner, settings: Settings) -> None:
    """Open what the app holds and bind; a known failure is raised as a StartupError. Called
    inside serve's try, so a database that fails to open still closes what did open."""
    try:
        await runner.setup()
        assert runner.server is not None
        harden(runner.server, settings.max_connections)
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise listen_error(exc, settings) from None
    except Exception as exc:
        raise _named(exc, settings) from None


def _named(exc: Exception, settings: Settings) -> Exception:
    """The StartupError naming `exc`'s kind, or `exc` itself when it is a bug."""
    return classify(exc, settings) or exc


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
