"""`GET /keys/usage`: chat usage per key since the daemon started (requests, refused, tokens,
in flight now, and the limits that apply). An admin sees every key; anyone else its own.

Also where a caller's chat limits are decided: the key's own, else its role's default
(`LAWCHATD_USER_MAX_CONCURRENT`, `LAWCHATD_USER_TOKENS_PER_MINUTE` for `user` keys; admins
have none unless the key sets them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from lawchatd.modelhost import Conversation, Limits
from lawchatd.modelhost.chat_types import Chunk, Sampling
from lawchatd.modelhost.fairshare import NO_LIMITS
from lawchatd.web.auditing import watch_chat
from lawchatd.web.caller import Caller, Role, caller_of
from lawchatd.web.keys import CHAT_TIMINGS, MODEL_HOST, SETTINGS

routes = web.RouteTableDef()


def answer_for(
    request: web.Request, conversation: Conversation, sampling: Sampling, prompt: Any = None
) -> AsyncIterator[Chunk]:
    """The model's answer for whoever sent `request`: a fair share of the slots, held to the
    caller's limits, timed for /metrics and recorded in the audit trail (`prompt` is the text
    it keeps when LAWCHATD_AUDIT_CONTENT is on). Every /v1 route that generates goes here."""
    caller = caller_of(request)
    stream = request.app[MODEL_HOST].chat_stream(
        conversation, sampling, caller.name, limits_for(request.app, caller)
    )
    return watch_chat(request, request.app[CHAT_TIMINGS].observe(stream), prompt=prompt)


def limits_for(app: web.Application, caller: Caller) -> Limits:
    default = NO_LIMITS
    settings = app.get(SETTINGS)
    if settings is not None and caller.role is not Role.ADMIN:
        default = Limits(settings.user_max_concurrent, settings.user_tokens_per_minute)
    return Limits(
        default.max_concurrent if caller.max_concurrent is None else caller.max_concurrent,
        default.tokens_per_minute if caller.tokens_per_minute is None else caller.tokens_per_minute,
    )


@routes.get("/keys/usage")
async def keys_usage(request: web.Request) -> web.Response:
    caller = caller_of(request)
    fair = request.app[MODEL_HOST].admission.fair
    names = sorted(fair.usage) if caller.role is Role.ADMIN else [caller.name]
    keys = []
    for name in names:
        figures = fair.figures(name)
        if name == caller.name:  # the limits that apply now, even before its first request
            limits = limits_for(request.app, caller)
            figures["max_concurrent"] = limits.max_concurrent
            figures["tokens_per_minute"] = limits.tokens_per_minute
        keys.append({"name": name, **figures})
    return web.json_response({"keys": keys})
