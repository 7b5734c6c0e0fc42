"""`POST /models/load`: put a downloaded variant in front of the chat API (the hot-swap path);
`DELETE /models/{variant}`: delete a downloaded file that nothing uses.

The body is the old app's (`{"message", "model_variant", "status": "loaded"|"failed",
"loaded"}`, its page reads them), with the body of `GET /models/loaded` beside it as
`loaded_model` for lawchatd's dashboard.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from lawchatd.errors import Conflict, Forbidden, NotFound
from lawchatd.modelhost import ModelLoadError, ModelTooLarge
from lawchatd.web.body import read_json
from lawchatd.web.caller import Role, caller_of
from lawchatd.web.keys import ACTIVATOR, MANAGER, MODEL_HOST
from lawchatd.web.routes.legacy import known_spec, loaded_body

routes = web.RouteTableDef()


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_variant: StrictStr
    force_reload: StrictBool = False


def _answer(request: web.Request, variant: str, message: str, loaded: bool = True) -> dict:
    return {
        "message": message,
        "model_variant": variant,
        "status": "loaded" if loaded else "failed",
        "loaded": loaded,
        "loaded_model": loaded_body(request),
    }


@routes.post("/models/load")
async def post_load(request: web.Request) -> web.Response:
    body = await read_json(request, LoadRequest)
    spec = known_spec(request, body.model_variant)
    manager = request.app[MANAGER]
    if not manager.is_downloaded(spec):
        raise NotFound(f"{spec.variant} is not downloaded; download it first")
    if request.app[MODEL_HOST].model_variant == spec.variant and not body.force_reload:
        return web.json_response(_answer(request, spec.variant, f"{spec.variant} is loaded"))
    try:
        # LoadInProgress (409: any load running or waiting, a keep-alive wake-up too) answers
        # for itself. Shielded: a client that hangs up does not abort a swap half-way.
        await asyncio.shield(request.app[ACTIVATOR].load(spec, manager.final_path(spec)))
    except ModelTooLarge as exc:  # 507
        raise exc.reworded(f"Loading {spec.variant} refused: {exc}") from None
    except ModelLoadError as exc:  # 500, with the old app's answer beside the detail
        message = f"Loading {spec.variant} failed: {exc}"
        raise exc.reworded(message, _answer(request, spec.variant, message, False)) from None
    return web.json_response(_answer(request, spec.variant, f"{spec.variant} is loaded"))


@routes.delete("/models/{variant}")
async def delete_model(request: web.Request) -> web.Response:
    """Delete a downloaded model file (admin): refused in words while it is loaded, loading
    or downloading. (`DELETE /models/cleanup`, the partial files, is matched before this.)"""
    if caller_of(request).role != Role.ADMIN:
        raise Forbidden("Only an administrator's key can delete a model")
    spec = known_spec(request, request.match_info["variant"])
    host = request.app[MODEL_HOST]
    async with host.no_loads():  # checked and deleted with no load starting in between
        snap = host.snapshot()
        if snap.loading == spec.variant:
            raise Conflict(f"{spec.variant} is being loaded: wait until it is loaded, unload "
                           "it, then delete it")  # fmt: skip
        if snap.variant == spec.variant:
            raise Conflict(f"{spec.variant} is loaded and answers questions: unload it first, "
                           "then delete it")  # fmt: skip
        freed = await request.app[MANAGER].delete(spec)  # 409 while it downloads
    return web.json_response(
        {
            "message": f"{spec.variant} was deleted; {freed / 1e9:.2f} GB freed",
            "model_variant": spec.variant,
            "status": "deleted",
            "freed_bytes": freed,
        }
    )
