"""The five routes of the old app, field for field, so old clients and curl keep working."""

from __future__ import annotations

import asyncio
import shutil

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from lawchatd.fetch import Snapshot
from lawchatd.web.body import read_json
from lawchatd.web.caller import caller_of
from lawchatd.web.keys import ACTIVATOR, CATALOG, MANAGER, SETTINGS

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


def polled_progress(app: web.Application) -> dict:
    """PROGRESS for the pollers (the old page, old clients): a download that never reached
    the file (missing upstream, gated, offline) has no size from upstream; the catalog's size
    stands in, as the old app, which knew sizes from its catalog, answered — its page divides
    by `total_size`."""
    fields = progress_fields(app[MANAGER].snapshot())
    spec = app[CATALOG].get(fields["model_variant"]) if fields["model_variant"] else None
    if not fields["total_size"] and spec is not None:
        fields["total_size"] = spec.size
    return fields


def progress_message(snap: Snapshot) -> dict:
    """The WebSocket's `progress` message."""
    return {"type": "progress", **progress_fields(snap)}


async def available_models(app: web.Application) -> dict:
    """Every catalog variant with where it stands on disk (shared with the WebSocket snapshot);
    `on_download`: what a finished download of it will do ("load" or "keep", from
    LAWCHATD_AUTOLOAD and the model loaded now)."""
    manager = app[MANAGER]
    partial = await manager.partial_bytes()
    activator = app[ACTIVATOR]
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
            "on_download": activator.on_download(spec.variant),
        }
    return models


async def disk_usage(app: web.Application) -> dict:
    """The models folder: where it is, the bytes its models use and the bytes still free."""
    folder = app[SETTINGS].models_dir

    def measure() -> dict:
        used = sum(p.stat().st_size for p in folder.glob("*") if p.is_file())
        return {"folder": str(folder), "models_bytes": used,
                "free_bytes": shutil.disk_usage(folder).free}  # fmt: skip

    return await asyncio.to_thread(measure)


@routes.get("/models/available")
async def get_available(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "available_models": await available_models(request.app),
            "download_status": polled_progress(request.app),
            "disk": await disk_usage(request.app),
            "autoload": request.app[ACTIVATOR].autoload,
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
    status = await manager.start(
        body.model_variant, force=body.force, queue=body.queue, by=caller_of(request).name
    )
    reply = {
        "message": _MESSAGES[status].format(body.model_variant),
        "model_variant": body.model_variant,
        "status": status,
        "download_started": status == "download_started",
    }
    if status == "queued":
        reply["position"] = manager.queue.position(body.model_variant)
    return web.json_response(reply)


@routes.get("/downloads/history")
async def get_history(request: web.Request) -> web.Response:
    """The last runs, newest first: when, who, outcome, duration, average speed."""
    return web.json_response({"downloads": await request.app[MANAGER].history.recent()})


@routes.get("/models/download-progress")
async def get_progress(request: web.Request) -> web.Response:
    return web.json_response(polled_progress(request.app))


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
