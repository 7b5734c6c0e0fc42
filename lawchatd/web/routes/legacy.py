"""The old app's other routes, as its web page calls them: `/health`, `/models/loaded`,
`/models/unload`, `/models/switch` (and `/models/load`, in routes/models.py).

The old app could hold several models and switch between them; lawchatd holds one, the one
answering, so `loaded_models` has at most one entry and it is the active one. Where an old
field name meets a lawchatd one, the old meaning wins; lawchatd's own fields sit beside.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lawchatd.downloads.catalog import ModelSpec, UnknownVariant
from lawchatd.modelhost.activation import ACTIVE_KEY
from lawchatd.web.errors import error
from lawchatd.web.keys import CATALOG, MODEL_HOST, STORE

routes = web.RouteTableDef()


def answering(request: web.Request) -> str | None:
    """The variant that answers chat: loaded, or asleep after keep-alive (a request wakes it)."""
    return request.app[MODEL_HOST].status()["model_variant"]


def loaded_body(request: web.Request) -> dict[str, Any]:
    """GET /models/loaded: the old shape, with lawchatd's status fields beside it."""
    status = request.app[MODEL_HOST].status()
    variant = status["model_variant"]
    memory = status.get("memory_usage") or 0
    models = []
    if variant is not None:
        models.append(
            {
                "model_variant": variant,
                "model_path": status["path"],
                "loaded_at": status["loaded_at"],
                "memory_usage": memory,
                "is_active": True,
            }
        )
    return {
        "loaded_models": models,
        "active_model": variant,
        "total_memory_usage": memory if variant else 0,
        **status,
    }


@routes.get("/models/loaded")
async def get_loaded(request: web.Request) -> web.Response:
    return web.json_response(loaded_body(request))


@routes.get("/health")
async def get_health(request: web.Request) -> web.Response:
    variant = answering(request)
    return web.json_response(
        {
            "status": "healthy",
            "ai_engine_loaded": variant is not None,
            "loaded_models_count": 0 if variant is None else 1,
            "active_model": variant,
            "available_models": request.app[CATALOG].variants,
        }
    )


def _variant_query(request: web.Request) -> str:
    variant = request.query.get("model_variant")
    if not variant:
        raise error(422, "model_variant: the query parameter is required")
    return known_spec(request, variant).variant


def known_spec(request: web.Request, variant: str) -> ModelSpec:
    """The catalog's spec of ``variant``, or 400 naming the variants it has."""
    try:
        return request.app[CATALOG].require(variant)
    except UnknownVariant as exc:
        raise error(400, str(exc)) from None


@routes.post("/models/unload")
async def post_unload(request: web.Request) -> web.Response:
    variant = _variant_query(request)
    host = request.app[MODEL_HOST]
    if answering(request) != variant:
        return web.json_response(
            {
                "message": f"{variant} is not loaded",
                "model_variant": variant,
                "status": "not_loaded",
            }
        )
    await host.unload()  # requests running on it finish first
    await request.app[STORE].set_meta(ACTIVE_KEY, None)  # not loaded again at the next start
    return web.json_response(
        {"message": f"{variant} was unloaded", "model_variant": variant, "status": "unloaded"}
    )


@routes.post("/models/switch")
async def post_switch(request: web.Request) -> web.Response:
    variant = _variant_query(request)
    if answering(request) != variant:
        raise error(400, f"{variant} is not loaded; load it first with POST /models/load")
    return web.json_response(
        {"message": f"{variant} is the active model", "model_variant": variant, "status": "active"}
    )
