"""`/ws/progress`: a snapshot on connect, then the latest state as it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSCloseCode, web

from lawchatd.web.caller import BOOTSTRAP, caller_of
from lawchatd.web.keys import (
    BANDWIDTH,
    MANAGER,
    MODEL_HOST,
    PROGRESS,
    WEBSOCKET_CAP,
    WEBSOCKETS,
)
from lawchatd.web.people import PEOPLE
from lawchatd.web.routes.downloads import available_models, progress_fields
from lawchatd.web.routes.queue import downloads
from lawchatd.web.views import model_status

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
SEND_TIMEOUT = 10.0  # a client that takes longer to accept one message is dropped
KEY_CHECK_SECONDS = 2.0  # how soon a revoked key's open socket is closed


@routes.get("/ws/progress")
async def ws_progress(request: web.Request) -> web.WebSocketResponse:
    # Refused before the upgrade when the sockets are all taken: the slots short requests need
    # stay free (web/wscap.py).
    with request.app[WEBSOCKET_CAP].hold(request.remote):
        return await _serve(request)


async def _serve(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    app[WEBSOCKETS].add(ws)
    # Subscribe before the snapshot is built, so no change can fall between the two.
    subscriber = app[PROGRESS].subscribe()
    sender: asyncio.Task | None = None
    watcher: asyncio.Task | None = None
    try:
        await ws.send_json(
            {
                "type": "snapshot",
                **progress_fields(app[MANAGER].snapshot()),
                "available_models": await available_models(app),
                "loaded_model": model_status(app[MODEL_HOST].snapshot()),
                "bandwidth": app[BANDWIDTH].status(),  # later: `bandwidth` messages
                "downloads": downloads(app),  # later: `queue` messages
            }
        )
        sender = asyncio.create_task(_pump(ws, subscriber))
        watcher = asyncio.create_task(_close_when_key_ends(request, ws))
        async for _ in ws:  # the client has nothing to say; reading notices when it leaves
            pass
    finally:
        for task in (sender, watcher):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        app[PROGRESS].unsubscribe(subscriber)
        app[WEBSOCKETS].discard(ws)
    return ws


async def _close_when_key_ends(request: web.Request, ws: web.WebSocketResponse) -> None:
    """A socket outlives the request that opened it: a key revoked (the API or `lawchatd keys
    revoke`) or expired since then ends it within a few seconds."""
    people = request.app.get(PEOPLE)
    caller = caller_of(request)
    if people is None or caller is BOOTSTRAP:  # the bootstrap key (or none) never ends
        return
    while not ws.closed:
        await asyncio.sleep(KEY_CHECK_SECONDS)
        if not await people.still_live(caller):
            log.info("closing %s's progress socket: the key no longer opens the daemon", caller.name)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"key revoked or expired")
            return


async def _pump(ws: web.WebSocketResponse, subscriber) -> None:
    while not ws.closed:
        for published in await subscriber.next_batch():
            try:
                await asyncio.wait_for(ws.send_str(published.text), SEND_TIMEOUT)
            except (TimeoutError, ConnectionError):
                log.info("dropping a WebSocket client that stopped reading")
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too slow")
                return
