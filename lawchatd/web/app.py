"""The application factory: what the daemon holds, opened and closed in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

from aiohttp import WSCloseCode, web

from lawchatd import __version__
from lawchatd.activation import Activator
from lawchatd.config import NEVER, Settings
from lawchatd.downloads.catalog import Catalog, load_catalog
from lawchatd.downloads.manager import DownloadManager
from lawchatd.hub.client import HubClient
from lawchatd.hub.session import client_session
from lawchatd.modelhost import ModelHost
from lawchatd.state.progress import ProgressHub
from lawchatd.state.store import Store
from lawchatd.web import session
from lawchatd.web.auditing import audit_actions, audit_ctx
from lawchatd.web.auth import require_api_key
from lawchatd.web.body import BODY_TIMEOUT
from lawchatd.web.errors import json_errors
from lawchatd.web.guard import (
    HOSTS,
    guard,
    learn_machine_names,
    own_host_names,
    security_headers,
)
from lawchatd.web.keys import (
    ACTIVATOR,
    BANDWIDTH,
    CATALOG,
    MANAGER,
    MODEL_HOST,
    PROGRESS,
    SETTINGS,
    STORE,
    WEBSOCKET_CAP,
    WEBSOCKETS,
)
from lawchatd.web.people import people_ctx
from lawchatd.web.routes import bandwidth, downloads, keys, legacy, metrics, models, verify, ws
from lawchatd.web.routes.completions import add_completion_routes, add_not_served
from lawchatd.web.routes.downloads import progress_message
from lawchatd.web.routes.openai import add_chat_routes
from lawchatd.web.routes.queue import queue_message, queue_routes
from lawchatd.web.routes.responses import add_responses_routes
from lawchatd.web.wscap import SocketCap

log = logging.getLogger(__name__)
# Package data (lawchatd/static links to the top-level static/), so a wheel serves it too.
STATIC_DIR = Path(str(resources.files("lawchatd") / "static"))
MAX_BODY = 1 << 20  # chat histories fit; anything larger is a mistake or an attack


def create_app(settings: Settings, catalog: Catalog | None = None) -> web.Application:
    # Errors become JSON first (OpenAI's shape on /v1); hostile Host/Origin/Content-Type are
    # refused before the key.
    app = web.Application(
        middlewares=[json_errors, guard, require_api_key, audit_actions],
        client_max_size=MAX_BODY,
    )
    app[SETTINGS] = settings
    app[HOSTS] = own_host_names(settings)
    app[BODY_TIMEOUT] = settings.body_timeout
    app[CATALOG] = catalog or load_catalog(settings.catalog)
    app[PROGRESS] = ProgressHub()
    app[WEBSOCKETS] = set()
    app[WEBSOCKET_CAP] = SocketCap(settings.max_connections)
    bandwidth.setup(app)  # the download cap (app[BANDWIDTH].limiter) and its routes
    # Registered in this order, cleaned up in reverse: the download stops before the store closes.
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(audit_ctx)  # after the store: its migration made the tables
    app.cleanup_ctx.append(people_ctx)
    app.cleanup_ctx.append(session.sessions_ctx)
    app.cleanup_ctx.append(_model_host)
    app.cleanup_ctx.append(_downloads)
    app.on_shutdown.append(_close_websockets)
    app.on_response_prepare.append(security_headers)
    app.on_startup.append(learn_machine_names)

    app.router.add_get("/healthz", healthz)
    app.add_routes(downloads.routes)
    app.add_routes(queue_routes)
    app.add_routes(models.routes)
    app.add_routes(legacy.routes)
    app.add_routes(verify.routes)
    app.add_routes(ws.routes)
    metrics.setup(app)  # /metrics and the registry it renders
    app.add_routes(session.routes)
    app.add_routes(keys.routes)
    add_chat_routes(app)
    add_completion_routes(app)
    add_responses_routes(app)
    add_not_served(app)  # after every /v1 route: the rest answer "not supported"
    if STATIC_DIR.is_dir():
        app.router.add_get("/", _index)
        app.router.add_static("/static/", STATIC_DIR)
        app.on_response_prepare.append(_revalidate_static)
    else:
        log.warning("no dashboard: %s is missing (install from a checkout)", STATIC_DIR)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def _revalidate_static(request: web.Request, response: web.StreamResponse) -> None:
    # After an upgrade the browser must not keep running yesterday's app.js.
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    app[STORE] = await Store.open(settings.db_path)
    yield
    await app[STORE].close()


async def _model_host(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    host = ModelHost(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        parallel=settings.parallel,
        keep_alive=settings.keep_alive,
        load_wait=settings.load_wait,
        memory_max=settings.memory_max,
        queue_limit=settings.chat_queue_limit,
        on_event=app[PROGRESS].publish,
    )
    app[MODEL_HOST] = host
    app[ACTIVATOR] = Activator(host, app[STORE], settings.autoload)
    yield
    await host.close()


async def _downloads(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = client_session(settings)
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    activator = app[ACTIVATOR]
    manager = DownloadManager(
        settings,
        app[CATALOG],
        app[STORE],
        HubClient(session, settings.hf_endpoint, token),
        lambda snap: app[PROGRESS].publish(progress_message(snap)),
        on_verified=activator.downloaded if settings.autoload != NEVER else None,
        limiter=app[BANDWIDTH].limiter,
        on_queue=lambda: app[PROGRESS].publish(queue_message(app)),
    )
    app[MANAGER] = manager
    await manager.resume_interrupted()

    async def restore() -> None:  # after changed final files are checked again
        await activator.restore(await manager.downloaded_files())

    restoring = asyncio.create_task(restore())
    yield
    restoring.cancel()
    await asyncio.gather(restoring, return_exceptions=True)
    await manager.close()
    await session.close()


async def _close_websockets(app: web.Application) -> None:
    # All at once and bounded: a dead browser tab must not hold the stop past systemd's limit.
    closing = [
        asyncio.create_task(ws.close(code=WSCloseCode.GOING_AWAY, message=b"lawchatd is stopping"))
        for ws in app[WEBSOCKETS]
    ]
    if closing:
        await asyncio.wait(closing, timeout=2)
