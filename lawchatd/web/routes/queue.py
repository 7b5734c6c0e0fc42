"""`GET /downloads` (the running download, then the queue) and `DELETE /downloads/{variant}`."""

from __future__ import annotations

from aiohttp import web

from lawchatd.downloads.manager import DownloadManager
from lawchatd.errors import NotFound
from lawchatd.fetch import Status
from lawchatd.web.keys import CATALOG, MANAGER
from lawchatd.web.routes.downloads import progress_fields

queue_routes = routes = web.RouteTableDef()


def downloads(app: web.Application) -> list[dict]:
    """The running download (PROGRESS fields) first, then each queued variant in order."""
    manager: DownloadManager = app[MANAGER]
    listed = []
    snap = manager.snapshot()
    if manager.running and snap.status == Status.DOWNLOADING:
        listed.append({**progress_fields(snap), "position": 0})
    for number, entry in enumerate(manager.queue.entries, start=1):
        spec = app[CATALOG].get(entry.variant)
        listed.append(
            {
                "model_variant": entry.variant,
                "status": "queued",
                "position": number,
                "force": entry.force,
                "total_size": spec.size if spec else 0,
                "downloaded_size": 0,
            }
        )
    return listed


def queue_message(app: web.Application) -> dict:
    """The WebSocket's `queue` message: sent whenever the queue changes."""
    return {"type": "queue", "downloads": downloads(app)}


@routes.get("/downloads")
async def get_downloads(request: web.Request) -> web.Response:
    return web.json_response({"downloads": downloads(request.app)})


@routes.delete("/downloads/{variant}")
async def delete_queued(request: web.Request) -> web.Response:
    variant = request.match_info["variant"]
    if not await request.app[MANAGER].queue.remove(variant):
        raise NotFound(f"{variant} is not queued")
    return web.json_response(
        {"message": f"{variant} was removed from the queue", "model_variant": variant}
    )
