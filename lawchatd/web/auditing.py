"""The audit trail, as the web side writes it.

- `audit_actions` (middleware, after auth): every state-changing admin route is recorded
  before it runs ("requested") and once it answered ("ok" or "failed" with the status). When
  the first row cannot be written, the action does not happen: 503 in words.
- `record` for one event (logins, refusals, key changes); `watch_chat` wraps a chat
  answer and records who, the model, tokens, status and duration when it ends (the text only
  with LAWCHATD_AUDIT_CONTENT=true).
- `audit_ctx` opens the trail and prunes it by LAWCHATD_AUDIT_RETENTION_DAYS (at start and
  every hour; each prune is itself recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from lawchatd.errors import LawchatdError
from lawchatd.modelhost.chat_types import Chunk
from lawchatd.state.audit import AuditTrail, AuditWriteFailed
from lawchatd.web.body import JSON_BODY
from lawchatd.web.caller import caller_of
from lawchatd.web.keys import SETTINGS
from lawchatd.web.roles import Permission, needed, route_pattern

log = logging.getLogger(__name__)
AUDIT = web.AppKey("audit", AuditTrail)
PRUNE_EVERY = 3600.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Names for the admin actions; any other state-changing route is recorded as "METHOD /pattern".
ACTIONS = {
    ("POST", "/models/download"): "download",
    ("POST", "/models/cancel-download"): "cancel",
    ("DELETE", "/models/cleanup"): "cleanup",
    ("POST", "/models/load"): "load",
    ("POST", "/models/unload"): "unload",
    ("POST", "/models/switch"): "switch",
    ("PUT", "/downloads/bandwidth"): "bandwidth",
    ("DELETE", "/downloads/{variant}"): "queue.remove",
    ("DELETE", "/models/{variant}"): "delete",
    ("POST", "/models/verify"): "verify",
    ("POST", "/keys"): "key.add",
    ("DELETE", "/keys/{name}"): "key.revoke",
}


def action_name(request: web.Request) -> str:
    pattern = route_pattern(request)
    return ACTIONS.get((request.method, pattern), f"{request.method} {pattern}")


def target_of(request: web.Request) -> str | None:
    info = request.match_info
    return info.get("variant") or info.get("name") or request.query.get("model_variant") or None


async def record(
    request: web.Request, action: str, target: str | None = None, outcome: str = "ok", **detail
) -> None:
    """Append one event as the request's caller; AuditWriteFailed (503, in words) if not."""
    caller = caller_of(request)
    await _append(request.app, caller.name, str(caller.role), action, target, outcome, detail)


async def record_as(
    request: web.Request, actor: str, action: str, outcome: str, **detail: Any
) -> None:
    """An event whose actor is not (yet) a caller: a login, a failed key."""
    await _append(request.app, actor, None, action, None, outcome, detail)


async def _append(app, actor, role, action, target, outcome, detail) -> None:
    try:
        await app[AUDIT].append(actor, action, target, outcome, role, **detail)
    except AuditWriteFailed as exc:
        log.error("%s; refused %s by %s", exc.message, action, actor)
        raise exc.reworded(
            f"This was not done because the audit trail could not record it ({exc.message}); "
            "the administrator should check the disk and the database file"
        ) from None


@web.middleware
async def audit_actions(request: web.Request, handler):
    if request.method in SAFE_METHODS or needed(request) is not Permission.ADMIN:
        return await handler(request)
    action = action_name(request)
    target = target_of(request)
    query = dict(request.query)
    await record(request, action, target, "requested", **({"query": query} if query else {}))
    started = time.monotonic()
    try:
        response = await handler(request)
    except LawchatdError as exc:
        await _outcome(request, action, target, exc.status, started, error=exc.message)
        raise
    except web.HTTPException as exc:
        await _outcome(request, action, target, exc.status, started)
        raise
    except Exception:
        await _outcome(request, action, target, 500, started)
        raise
    await _outcome(request, action, target or _answered_variant(response), response.status, started)
    return response


# What an admin's request body may put in the trail: never a key, never chat text.
RECORDED_FIELDS = ("model_variant", "force", "queue", "force_reload", "max_rate", "name", "role")


async def _outcome(request, action, target, status, started, **detail) -> None:
    outcome = "ok" if status < 400 else "failed"
    seconds = round(time.monotonic() - started, 3)
    body = request.get(JSON_BODY) or {}
    asked = {k: body[k] for k in RECORDED_FIELDS if k in body}
    if asked:
        detail["asked"] = asked
        named = asked.get("model_variant") or asked.get("name")
        target = target or (named if isinstance(named, str) else None)
    # When this fails (logged), the action happened and was recorded as requested.
    with contextlib.suppress(AuditWriteFailed):
        await record(request, action, target, outcome, status=status, seconds=seconds, **detail)


def _answered_variant(response: web.StreamResponse) -> str | None:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes) or not body.startswith(b"{"):
        return None
    with contextlib.suppress(ValueError):
        answer = json.loads(body)
        value = answer.get("model_variant") or answer.get("name")  # never "key"
        return value if isinstance(value, str) else None
    return None


def check_writable(request: web.Request) -> None:
    """Before a chat: refuse it while the trail is failing (its record could not be kept)."""
    if not request.app[AUDIT].healthy:
        raise AuditWriteFailed(
            "Chat is paused because the audit trail could not be written; "
            "the administrator should check the disk and the database file",
            retry_after=5,
        )


def watch_chat(
    request: web.Request, chunks: AsyncIterator[Chunk], prompt: Any = None
) -> AsyncIterator[Chunk]:
    """`chunks`, passed through; when the answer ends (done, failed or abandoned) one `chat`
    event records it. The chat route calls this on its chunk stream. An app without an audit
    trail (a test's bare chat app) gets `chunks` as they are."""
    if AUDIT not in request.app:
        return chunks
    return _watched(request, chunks, prompt)


async def _watched(
    request: web.Request, chunks: AsyncIterator[Chunk], prompt: Any
) -> AsyncIterator[Chunk]:
    check_writable(request)
    settings = request.app.get(SETTINGS)
    keep_text = settings is not None and settings.audit_content
    started = time.monotonic()
    model = None
    usage = None
    finish = None
    texts: list[str] = []
    status = 200
    try:
        async for chunk in chunks:
            model = chunk.model_variant
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
            if keep_text and chunk.text:
                texts.append(chunk.text)
            yield chunk
    except LawchatdError as exc:
        status = exc.status
        raise
    except (GeneratorExit, asyncio.CancelledError):
        status = 499  # the client went away
        raise
    except Exception:
        status = 500
        raise
    finally:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]
        detail: dict[str, Any] = {
            "model": model,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "status": status,
            "finish_reason": finish,
            "seconds": round(time.monotonic() - started, 3),
        }
        if keep_text:
            detail["prompt"] = prompt
            detail["completion"] = "".join(texts)
        _in_background(request, detail, "ok" if status < 400 else "failed")


def _in_background(request: web.Request, detail: dict[str, Any], outcome: str) -> None:
    """The chat's record joins the trail's next batch: never on the answer's own time."""
    caller = caller_of(request)
    request.app[AUDIT].append_soon(
        caller.name, "chat", request.path, outcome, str(caller.role), **detail
    )


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[AUDIT] = trail = await AuditTrail.open(settings.db_path)
    pruning = None
    if settings.audit_retention_days:
        pruning = asyncio.create_task(_prune_forever(trail, settings.audit_retention_days))
    try:
        yield
    finally:
        if pruning:
            pruning.cancel()
            await asyncio.gather(pruning, return_exceptions=True)
        await trail.close()


async def _prune_forever(trail: AuditTrail, days: float) -> None:
    while True:
        try:
            deleted = await trail.prune(days)
            if deleted:
                log.info("audit trail: pruned %d events older than %s days", deleted, days)
        except Exception as exc:  # noqa: BLE001 - a prune that fails is retried next hour
            log.error("audit trail: pruning failed: %s", exc)
        await asyncio.sleep(PRUNE_EVERY)
