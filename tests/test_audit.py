"""The audit trail's chain on its own (lawchatd/state/audit.py): appends, pruning that is itself
recorded and keeps the chain checkable, and the breaks `verify` names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from lawchatd.config import Settings
from lawchatd.modelhost.chat_types import Chunk, Usage
from lawchatd.state.audit import AuditTrail
from lawchatd.state.store import Store
from lawchatd.web.auditing import AUDIT, watch_chat
from lawchatd.web.caller import Caller, Role, set_caller
from lawchatd.web.keys import SETTINGS


async def trail_at(tmp_path: Path) -> AuditTrail:
    await (await Store.open(tmp_path / "db.sqlite3")).close()  # the migration makes the table
    return await AuditTrail.open(tmp_path / "db.sqlite3")


async def test_a_pruned_trail_stays_whole_and_says_it_was_pruned(tmp_path: Path) -> None:
    trail = await trail_at(tmp_path)
    try:
        for n in range(5):
            await trail.append("anna", "download", f"model-{n}", "ok", "admin", n=n)
        assert await trail.verify() == (5, None)
        assert await trail.prune(days=0) == 5  # everything is older than "now"
        rows = [row async for row in trail.rows()]
        assert [r["action"] for r in rows] == ["audit.prune"] and '"deleted": 5' in rows[0][
            "detail"
        ]
        await trail.append("anna", "load", "model-1")
        assert await trail.verify() == (2, None)
        assert await trail.prune(days=30) == 0  # nothing that old: nothing recorded either
        assert (await trail.verify())[0] == 2
    finally:
        await trail.close()


async def test_verify_names_the_first_broken_row(tmp_path: Path) -> None:
    trail = await trail_at(tmp_path)
    try:
        for n in range(6):
            await trail.append("anna", "chat", None, "ok", "user", prompt_tokens=n)
        with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
            db.execute("UPDATE audit SET detail = '{\"prompt_tokens\": 99}' WHERE id = 4")
            db.commit()
        _, broken = await trail.verify()
        assert broken is not None and broken.row_id == 4 and "edited" in str(broken)
        with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
            db.execute("DELETE FROM audit WHERE id IN (2, 4)")
            db.commit()
        _, broken = await trail.verify()
        assert broken is not None and broken.row_id == 3 and "rows 2..2 are missing" in str(broken)
    finally:
        await trail.close()


async def test_retention_prunes_at_start_and_records_it(make_daemon) -> None:
    daemon = await make_daemon().start()
    status, _ = await daemon.post("/models/cancel-download")
    assert status == 200
    await daemon.close()
    await asyncio.sleep(1.0)
    # 0.00001 days is 0.864 s: every event of the first run is older than that by now.
    again = await make_daemon(LAWCHATD_AUDIT_RETENTION_DAYS="0.00001").start()
    trail = await AuditTrail.open(daemon.data_dir / "lawchatd.sqlite3")
    try:
        for _ in range(50):
            actions = [row["action"] async for row in trail.rows()]
            if "audit.prune" in actions:
                break
            await asyncio.sleep(0.1)
        assert "cancel" not in actions and "audit.prune" in actions, actions
        assert (await trail.verify())[1] is None
    finally:
        await trail.close()
        await again.close()


@pytest.mark.parametrize("keep", [False, True])
async def test_a_chat_record_has_the_text_only_when_asked(tmp_path: Path, keep: bool) -> None:
    trail = await trail_at(tmp_path)
    app = web.Application()
    app[AUDIT] = trail
    app[SETTINGS] = Settings(data_dir=tmp_path, audit_content=keep, _env_file=None)
    request = make_mocked_request("POST", "/v1/chat/completions", app=app)
    set_caller(request, Caller("anna", Role.USER))

    async def answer() -> AsyncIterator[Chunk]:
        yield Chunk("law-7b", "A tort is ")
        yield Chunk("law-7b", "a civil wrong.", "stop", Usage(12, 5))

    prompt = [{"role": "user", "content": "What is a tort?"}]
    texts = [chunk.text async for chunk in watch_chat(request, answer(), prompt)]
    assert "".join(texts) == "A tort is a civil wrong."
    try:
        for _ in range(50):
            rows = [row async for row in trail.rows()]
            if rows:
                break
            await asyncio.sleep(0.02)
        (row,) = rows
        detail = json.loads(row["detail"])
        assert row["actor"] == "anna" and row["role"] == "user" and row["action"] == "chat"
        assert detail["model"] == "law-7b" and detail["status"] == 200
        assert (detail["prompt_tokens"], detail["completion_tokens"]) == (12, 5)
        assert ("completion" in detail) is keep and ("What is a tort?" in row["detail"]) is keep
        if keep:
            assert detail["completion"] == "A tort is a civil wrong."
    finally:
        await trail.close()
