"""`POST /models/load`: put a downloaded variant in front of the chat API (the hot-swap path)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr

from lawchatd.manager import UnknownVariant
from lawchatd.modelhost import LoadInProgress, ModelLoadError, ModelTooLarge
from lawchatd.web.errors import error, read_json
from lawchatd.web.keys import ACTIVATOR, CATALOG, MANAGER, MODEL_HOST

routes = web.RouteTableDef()


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_variant: StrictStr


@routes.post("/models/load")
async def post_load(request: web.Request) -> web.Response:
    body = await read_json(request, LoadRequest)
    catalog = request.app[CATALOG]
    spec = catalog.get(body.model_variant)
    if spec is None:
        raise error(400, str(UnknownVariant(body.model_variant, catalog.variants)))
    manager = request.app[MANAGER]
    if not manager.is_downloaded(spec):
        raise error(404, f"{spec.variant} is not downloaded; download it first")
    try:
        task = request.app[ACTIVATOR].begin(spec, manager.final_path(spec))
    except LoadInProgress as exc:
        raise error(409, str(exc)) from None
    try:
        # Shielded: a client that hangs up does not abort a swap half-way.
        await asyncio.shield(task)
    except ModelTooLarge as exc:
        raise error(507, f"Loading {spec.variant} refused: {exc}") from None
    except ModelLoadError as exc:
        raise error(500, f"Loading {spec.variant} failed: {exc}") from None
    return web.json_response(request.app[MODEL_HOST].status())
