"""The one error tree and its one renderer: the same error in the three shapes its clients read
(`{"detail"}`, OpenAI's `{"error"}` on /v1, the Hub's X-Error-* headers on the mirror), a bug
as a 500 that tells nothing of it, and exceptions in words."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sqlite3
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import lawchatd
from lawchatd.errors import (
    INTERNAL,
    LawchatdError,
    NotFound,
    TooManyRequests,
    TransientError,
    UserError,
    in_words,
)
from lawchatd.modelhost import ModelTooLarge, NoModelLoaded
from lawchatd.web.errors import hub_errors, json_errors

SECRET = "secret detail of a bug at /home/clerk/lawchatd/x.py"


def model_not_found() -> NotFound:
    return NotFound("The model 'x' is not loaded", param="model", code="model_not_found")


def raising(make: Callable[[], BaseException]):
    async def handler(request: web.Request) -> web.Response:
        raise make()

    return handler


@pytest.fixture
async def served() -> AsyncIterator[Callable]:
    """A client of an app whose every route raises what `make` makes: the daemon's middleware
    (detail at /x, OpenAI's shape at /v1/x) or the mirror's."""
    clients: list[TestClient] = []

    async def serve(make: Callable[[], BaseException], mirror: bool = False) -> TestClient:
        app = web.Application(middlewares=[hub_errors if mirror else json_errors])
        app.router.add_get("/x", raising(make))
        app.router.add_get("/v1/x", raising(make))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield serve
    for client in clients:
        await client.close()


async def test_one_error_in_the_three_shapes(served) -> None:
    daemon = await served(model_not_found)
    resp = await daemon.get("/x")
    assert resp.status == 404
    assert await resp.json() == {"detail": "The model 'x' is not loaded"}

    resp = await daemon.get("/v1/x")
    assert resp.status == 404
    assert await resp.json() == {
        "error": {
            "message": "The model 'x' is not loaded",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }

    mirror = await served(model_not_found, mirror=True)
    resp = await mirror.get("/x")
    assert resp.status == 404 and await resp.json() == {"error": "The model 'x' is not loaded"}
    assert resp.headers["X-Error-Code"] == "model_not_found"
    assert resp.headers["X-Error-Message"] == "The model 'x' is not loaded"


@pytest.mark.parametrize("mirror", [False, True])
async def test_a_bug_is_a_500_that_tells_nothing(served, mirror: bool, caplog) -> None:
    client = await served(lambda: ZeroDivisionError(SECRET), mirror=mirror)
    for path in ("/x", "/v1/x"):
        resp = await client.get(path)
        assert resp.status == 500 and resp.content_type == "application/json"
        text = await resp.text()
        assert SECRET not in text and "Traceback" not in text and "ZeroDivision" not in text
        assert INTERNAL in text
        assert SECRET not in str(resp.headers)
    assert SECRET in caplog.text  # the log has it, with the traceback


async def test_what_a_client_may_retry(served) -> None:
    # A 503 without a wait: the SDKs must not retry (no model is loaded).
    resp = await (await served(lambda: NoModelLoaded("No model is loaded"))).get("/v1/x")
    assert resp.status == 503 and resp.headers["x-should-retry"] == "false"
    assert (await resp.json())["error"]["type"] == "server_error"
    # A transient error says when to come back, in every shape.
    busy = await served(lambda: TooManyRequests("Too many requests", retry_after=3))
    resp = await busy.get("/v1/x")
    assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    assert resp.headers["x-should-retry"] == "true"
    assert (await resp.json())["error"]["type"] == "rate_limit_error"
    resp = await busy.get("/x")
    assert resp.headers["Retry-After"] == "3" and "x-should-retry" not in resp.headers


async def test_aiohttp_refusals_speak_json(served) -> None:
    client = await served(model_not_found)
    resp = await client.get("/nowhere")
    assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}
    resp = await client.post("/v1/x")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


def test_a_reworded_error_keeps_its_status_and_leaves_the_original_alone() -> None:
    original = ModelTooLarge("needs 9 GB, 4 GB free", needed=9, available=4)
    told = original.reworded("Loading big refused: needs 9 GB, 4 GB free", {"loaded": False})
    assert (told.status, told.code, told.needed) == (507, "model_too_large", 9)
    assert told.fields == {"loaded": False}
    assert original.message == "needs 9 GB, 4 GB free" and original.fields == {}


def test_every_lawchatd_error_is_on_the_tree() -> None:
    # Start-up's errors (and the store's refusal of a newer schema, which start-up turns into
    # one) and the CLI's client errors carry exit codes, not answers.
    outside = {"StartupError", "SchemaTooNew", "ClientError"}
    found = []
    for module in pkgutil.walk_packages(lawchatd.__path__, "lawchatd."):
        if module.name == "lawchatd.__main__":
            continue
        loaded = importlib.import_module(module.name)
        found += [
            obj
            for name, obj in vars(loaded).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException)
            and obj.__module__ == module.name and name not in outside
        ]
    assert len(found) > 30
    stray = [f"{c.__module__}.{c.__name__}" for c in found if not issubclass(c, LawchatdError)]
    assert stray == []
    for kind in found:
        assert 400 <= kind.status < 600 and (kind.code is None or kind.code.islower())


def test_user_and_transient_errors_declare_what_an_answer_needs() -> None:
    assert issubclass(NotFound, UserError) and issubclass(TooManyRequests, TransientError)
    assert TransientError.retry_after is not None  # "later" always says when
    assert UserError("x", status=415).status == 415 and UserError.status == 400


# ---- in words ------------------------------------------------------------------------------


def test_in_words_hides_signatures_and_passwords() -> None:
    text = in_words(Exception("url='https://cdn.example/b?X-Amz-Signature=s3cret&Expires=9'"))
    assert "s3cret" not in text and "https://cdn.example/b?..." in text
    text = in_words(aiohttp.ClientError("cannot reach http://clerk:pw@proxy:3128/"))
    assert "pw" not in text and "***@proxy" in text


def test_in_words_tells_a_group_by_the_leaf_that_matters() -> None:
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ValueError("v"), NotFound("gone")])
    assert in_words(group) == "gone"
    nested = ExceptionGroup("x", [ExceptionGroup("y", [PermissionError(13, "Denied", "/m/f")])])
    unplanned = in_words(nested, unexpected=True)
    assert "TaskGroup" not in unplanned and "Denied (/m/f)" in unplanned
    assert "check the data folder" in unplanned
    db = in_words(sqlite3.OperationalError("attempt to write a readonly database"), unexpected=True)
    assert "state database cannot be written" in db
    assert in_words(TimeoutError()) == "no data arrived within the stall timeout"
