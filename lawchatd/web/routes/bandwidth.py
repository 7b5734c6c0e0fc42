"""`GET|PUT /downloads/bandwidth`: the download cap in effect, changed at run time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from lawchatd.downloads.bandwidth import Bandwidth
from lawchatd.fetch.ratelimit import RateLimiter
from lawchatd.fetch.schedule import parse_schedule
from lawchatd.web.body import read_json
from lawchatd.web.keys import BANDWIDTH, PROGRESS, SETTINGS

routes = web.RouteTableDef()


class BandwidthRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_rate: StrictInt | None = Field(..., ge=0)  # bytes/s; 0 or null = unlimited


def setup(app: web.Application) -> None:
    """The shared limiter from the settings, its schedule task, and the routes."""
    settings = app[SETTINGS]
    progress = app[PROGRESS]
    app[BANDWIDTH] = Bandwidth(
        RateLimiter(),
        settings.max_rate,
        parse_schedule(settings.rate_schedule),
        on_change=lambda status: progress.publish({"type": "bandwidth", **status}),
    )
    app.cleanup_ctx.append(_schedule_task)
    app.add_routes(routes)


async def _schedule_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[BANDWIDTH].run()) if app[BANDWIDTH].schedule else None
    yield
    if task:
        task.cancel()


@routes.get("/downloads/bandwidth")
async def get_bandwidth(request: web.Request) -> web.Response:
    return web.json_response(request.app[BANDWIDTH].status())


@routes.put("/downloads/bandwidth")
async def put_bandwidth(request: web.Request) -> web.Response:
    body = await read_json(request, BandwidthRequest)
    bandwidth = request.app[BANDWIDTH]
    bandwidth.set_override(body.max_rate)
    return web.json_response(bandwidth.status())
