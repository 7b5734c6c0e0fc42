"""The mirror's aiohttp application, and `lawchatd mirror DIR` running it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from lawchatd.mirror.api import Api
from lawchatd.mirror.core import Core
from lawchatd.mirror.digests import Digests
from lawchatd.mirror.files import Files
from lawchatd.mirror.index import RepoIndex
from lawchatd.mirror.pull import CLIENT_WAIT, PullThrough
from lawchatd.mirror.repo import Repo
from lawchatd.mirror.report import repos_report
from lawchatd.mirror.signing import Signer
from lawchatd.process.httpserver import HardenedServer, harden
from lawchatd.process.logs import MaskingAccessLogger
from lawchatd.web.errors import hub_errors

if TYPE_CHECKING:
    from lawchatd.fetch import FetchOptions
    from lawchatd.hub.session import NetworkSettings

log = logging.getLogger("lawchatd.mirror")

CORE: web.AppKey[Core] = web.AppKey("mirror_core", Core)


def create_mirror_app(
    root: Path,
    *,
    cdn_base: str | None = None,
    token: str | None = None,
    upstream: str | None = None,
    upstream_token: str | None = None,
    fetch_options: FetchOptions | None = None,
    upstream_repos: Sequence[str] = (),
    network: NetworkSettings | None = None,
    client_wait: float | None = None,
) -> web.Application:
    """An aiohttp app serving ``root/<org>/<repo>/<file>`` like the Hub (see files.py, api.py).

    With `upstream`, files DIR lacks are fetched from there on first request (pull.py), for
    the repos matching `upstream_repos` (fnmatch patterns; none given: every repo), through
    the proxy and CA files of `network` (`lawchatd mirror` passes the daemon's Settings).
    `client_wait`: seconds a client waits for bytes from a stalled upstream before it hears
    a 503 with Retry-After (default 20).
    """
    real_root = Path(os.path.realpath(root))
    core = Core(
        root=real_root,
        token=token,
        signer=Signer(token) if token else None,
        cdn_base=cdn_base.rstrip("/") if cdn_base else None,
        digests=Digests(),
        index=RepoIndex(real_root),
    )
    app = web.Application(middlewares=[hub_errors])  # a Refused (or a bug) in the Hub's shape
    app[CORE] = core
    if upstream:
        core.pull = PullThrough(
            core.index, core.digests, upstream.rstrip("/"), upstream_token, fetch_options,
            upstream_repos, network, CLIENT_WAIT if client_wait is None else client_wait,
        )  # fmt: skip
        app.cleanup_ctx.append(core.pull.lifetime)
    app.router.add_get("/_mirror/status", _status)
    app.add_routes(Files(core).routes())
    app.add_routes(Api(core).routes())
    return app


async def _status(request: web.Request) -> web.Response:
    core = request.app[CORE]
    core.require_token(request)
    repos = await asyncio.to_thread(_list_repos, core.root)
    return web.json_response(
        {
            "root": str(core.root),
            "upstream": core.pull.endpoint if core.pull else None,
            "files": repos,
            "fetches": core.pull.fetches() if core.pull else [],
            "repos": await _repos(core),
        }
    )


async def _repos(core: Core) -> list[dict]:
    if core.pull is None:
        return []
    return await repos_report(core.pull)


def _list_repos(root: Path) -> list[dict]:
    files = []
    for org in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for folder in sorted(p for p in org.iterdir() if not p.name.startswith(".")):
            repo = Repo.scan(root, folder)
            if repo is None:
                continue
            files += [
                {
                    "repo": f"{org.name}/{folder.name}",
                    "path": e.relpath,
                    "size": e.size,
                    "lfs": e.lfs,
                }
                for e in repo.entries.values()
            ]
    return files


async def run_mirror(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8900,
    *,
    cdn_base: str | None = None,
    token: str | None = None,
    upstream: str | None = None,
    upstream_token: str | None = None,
    upstream_repos: Sequence[str] = (),
    network: NetworkSettings | None = None,
    client_wait: float | None = None,
) -> None:
    """Serve ``root`` until cancelled."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"mirror root {root} is not a directory")
    app = create_mirror_app(
        root,
        cdn_base=cdn_base,
        token=token,
        upstream=upstream,
        upstream_token=upstream_token,
        upstream_repos=upstream_repos,
        network=network,
        client_wait=client_wait,
    )
    # A short shutdown: a multi-GB response in flight must not hold up Ctrl-C for a minute.
    # Presigned URLs' signatures masked in the access log; what the HTTP parser refuses is one
    # INFO line, not an ERROR traceback (process/httpserver.py, without its connection cap).
    runner = web.AppRunner(app, shutdown_timeout=2.0, access_log_class=MaskingAccessLogger)
    await runner.setup()
    assert runner.server is not None
    harden(runner.server, HardenedServer.connection_limit)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        real_port = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        via = f", filling it from {upstream}" if upstream else ""
        log.info("mirror serving %s on http://%s:%d%s", root, shown, real_port, via)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
