"""The old app's other routes, as its web page calls them: `/health`, `/models/loaded`,
`/models/unload`, `/models/switch` (and `/models/load`, in routes/models.py).

The bodies are built in web/views.py. Where an old field name meets a lawchatd one, the old
meaning wins; lawchatd's own fields sit beside.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr

from lawchatd.downloads.catalog import ModelSpec
from lawchatd.errors import Unprocessable, UserError
from lawchatd.web import views
from lawchatd.web.body import read_json
from lawchatd.web.keys import ACTIVATOR, CATALOG, MODEL_HOST

routes = web.RouteTableDef()


def answering(request: web.Request) -> str | None:
    """The variant that answers chat: loaded, or asleep after keep-alive (a request wakes it)."""
    return request.app[MODEL_HOST].snapshot().variant


def loaded_body(request: web.Request) -> dict[str, Any]:
    """GET /models/loaded: the old shape, with lawchatd's status fields beside it."""
    return views.loaded_models(request.app[MODEL_HOST].snapshot())


@routes.get("/models/loaded")
async def get_loaded(request: web.Request) -> web.Response:
    return web.json_response(loaded_body(request))


@routes.get("/health")
async def get_health(request: web.Request) -> web.Response:
    snapshot = request.app[MODEL_HOST].snapshot()
    return web.json_response(views.health(snapshot, request.app[CATALOG].variants))


class VariantBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_variant: StrictStr


async def _variant_asked(request: web.Request) -> str:
    """`model_variant` from the query (lawchatd's clients) or a JSON body (the old page's
    Unload button sends `{"model_variant"}`)."""
    variant = request.query.get("model_variant")
    if not variant and request.can_read_body:
        variant = (await read_json(request, VariantBody)).model_variant
    if not variant:
        raise Unprocessable(
            "model_variant is required, as a query parameter or in a JSON body",
            param="model_variant",
        )
    return known_spec(request, variant).variant


def known_spec(request: web.Request, variant: str) -> ModelSpec:
    """The catalog's spec of ``variant``, or UnknownVariant (400) naming the variants it has."""
    return request.app[CATALOG].require(variant)


@routes.post("/models/unload")
async def post_unload(request: web.Request) -> web.Response:
    variant = await _variant_asked(request)
    if answering(request) != variant:
        return web.json_response(
            {
                "message": f"{variant} is not loaded",
                "model_variant": variant,
                "status": "not_loaded",
            }
        )
    await request.app[ACTIVATOR].unload()  # requests running on it finish first
    return web.json_response(
        {"message": f"{variant} was unloaded", "model_variant": variant, "status": "unloaded"}
    )


@routes.post("/models/switch")
async def post_switch(request: web.Request) -> web.Response:
    variant = await _variant_asked(request)
    if answering(request) != variant:
        raise UserError(f"{variant} is not loaded; load it first with POST /models/load")
    return web.json_response(
        {"message": f"{variant} is the active model", "model_variant": variant, "status": "active"}
    )
