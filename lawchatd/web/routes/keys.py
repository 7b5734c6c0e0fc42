"""`/keys` for the firm's administrator: list the keys, create one (its key is shown in this
answer only), revoke one. The same as `lawchatd keys ...` on the server; both are recorded
in the audit trail (by the audit middleware here)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from lawchatd.state.keys import parse_expiry
from lawchatd.web.body import read_json
from lawchatd.web.people import KEYSTORE

routes = web.RouteTableDef()


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    role: StrictStr = "user"
    expires: StrictStr | None = None  # an ISO date or time (UTC when no zone is given)
    max_concurrent: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


@routes.get("/keys")
async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[KEYSTORE].all()
    return web.json_response({"keys": [k.public() for k in keys]})


@routes.post("/keys")
async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request, NewKey)
    key, stored = await request.app[KEYSTORE].add(
        body.name,
        body.role,
        parse_expiry(body.expires),
        body.max_concurrent,
        body.tokens_per_minute,
    )
    return web.json_response(
        {**stored.public(), "key": key}, status=201, headers={"Cache-Control": "no-store"}
    )


@routes.delete("/keys/{name}")
async def revoke_key(request: web.Request) -> web.Response:
    stored = await request.app[KEYSTORE].revoke(request.match_info["name"])
    return web.json_response(stored.public())
