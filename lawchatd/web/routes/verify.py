"""`POST /models/verify`: hash a final file again now, on demand.

A final file is trusted while its size, mtime and inode are the ones verified; a byte flipped
with its mtime put back passes that. This hashes the file whatever its record says (in a
thread; seconds for a few GB) and answers what it found; a file that no longer matches stops
counting as downloaded. `lawchatd verify [VARIANT]` calls it.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StrictStr

from lawchatd.web.body import read_json
from lawchatd.web.keys import CATALOG, MANAGER

routes = web.RouteTableDef()

MESSAGES = {
    "verified": "{} is intact: its sha256 matches",
    "changed": "{} changed on disk: it no longer counts as downloaded; download it again",
    "missing": "{} is not downloaded",
    "unreadable": "{} could not be read to the end (it changed meanwhile, or the disk failed); "
    "try again",
}


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_variant: StrictStr


@routes.post("/models/verify")
async def post_verify(request: web.Request) -> web.Response:
    body = await read_json(request, VerifyRequest)
    spec = request.app[CATALOG].require(body.model_variant)  # UnknownVariant: 400
    result = await request.app[MANAGER].finals.verify(spec)
    return web.json_response(
        {
            "model_variant": spec.variant,
            "result": result,
            "downloaded": result == "verified",
            "message": MESSAGES[result].format(spec.variant),
        }
    )
