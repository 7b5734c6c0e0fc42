"""The five routes of the old app, field for field, so old clients and curl keep working."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from lawchatd.fetch import Snapshot
from lawchatd.web.body import read_json
from lawchatd.web.keys import CATALOG, MANAGER

routes = web.RouteTableDef()


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_variant: StrictStr
    force: StrictBool = False
    queue: StrictBool = False  # wait behind a running download (200 "queued") instead of 409


def progress_fields(snap: Snapshot) -> dict:
    """The contract's PROGRESS object: `speed` a number (0.0 unless downloading), `eta` null
    unless downloading."""
    fields = {
        "model_variant": snap.variant,
        "progress": round(100 * snap.done / snap.total, 2) if snap.total else 0,
        "status": str(snap.status),
        "error": snap.error,
        "total_size": snap.total,
        "downloaded_size": snap.done,
        "speed": round(snap.speed, 1),
        "eta": snap.eta,
        "phase": str(snap.phase) if snap.phase else None,
        "retries": snap.retries,
        "max_rate": snap.max_rate,
    }
    if snap.note:
        fields["message"] = snap.note
    return fields


def progress_message(snap: Snapshot) -> dict:
    """The WebSocket's `progress` message."""
    return {"type": "progress", **progress_fields(snap)}


async def available_models(app: web.Application) -> dict:
    """Every catalog variant with where it stands on disk (shared with the WebSocket snapshot)."""
    manager = app[MANAGER]
    partial = await manager.partial_bytes()
    models = {}
    for spec in app[CATALOG]:
        downloaded = manager.is_downloaded(spec)
        models[spec.variant] = {
            "filename": spec.filename,
            "size": spec.size,
            "downloaded": downloaded,
            "path": str(manager.final_path(spec)) if downloaded else None,
            "label": spec.label,
            "partial_bytes": partial.get(spec.variant, 0),
        }
    return models


@routes.get("/models/available")
async def get_available(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "available_models": await available_models(request.app),
            "download_status": progress_fields(request.app[MANAGER].snapshot()),
        }
    )


_MESSAGES = {
    "download_started": "Download of {} started",
    "already_downloaded": "{} is already downloaded",
    "already_downloading": "{} is already downloading",
    "queued": "{} is queued behind the running download",
}


@routes.post("/models/download")
async def post_download(request: web.Request) -> web.Response:
    body = await read_json(request, DownloadRequest)
    manager = request.app[MANAGER]
    # UnknownVariant (400), Busy (409) and NotEnoughSpace (507) answer for themselves.
    status = await manager.start(body.model_variant, force=body.force, queue=body.queue)
    reply = {
        "message": _MESSAGES[status].format(body.model_variant),
        "model_variant": body.model_variant,
        "status": status,
        "download_started": status == "download_started",
    }
    if status == "queued":
        reply["position"] = manager.queue.position(body.model_variant)
    return web.json_response(reply)


@routes.get("/models/download-progress")
async def get_progress(request: web.Request) -> web.Response:
    return web.json_response(progress_fields(request.app[MANAGER].snapshot()))


@routes.post("/models/cancel-download")
async def post_cancel(request: web.Request) -> web.Response:
    cancelled, message = await request.app[MANAGER].cancel()
    return web.json_response({"message": message, "cancelled": cancelled})


@routes.delete("/models/cleanup")
async def delete_cleanup(request: web.Request) -> web.Response:
    cleaned = await request.app[MANAGER].cleanup()
    return web.json_response(
        {"message": f"Removed {cleaned} partial file(s)", "files_cleaned": cleaned}
    )
