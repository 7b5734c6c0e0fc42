"""A Hugging-Face-Hub-compatible file server with fault injection.

Serves ``ROOT/<org>/<repo>/<file>`` the way the Hub does: ``resolve`` answers a 302 carrying the
commit, the sha256 and the size, and points at a CDN route on which bytes are served with their
own ETag and HTTP ranges.  Firms without internet run it as ``lawchatd mirror DIR``; the
test-suite runs it as the daemon's upstream and injects faults through :class:`Faults`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args, get_type_hints
from urllib.parse import quote

import aiofiles
import aiofiles.os
from aiohttp import web

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # read size of the fast path
PACED_CHUNK = 64 << 10  # small chunks under a rate limit, so a cancel lands mid-way
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SIDECAR = ".sha256"


@dataclass
class Faults:
    """Faults the mirror injects; every field defaults to off and may be changed at any time.

    A fault with a ``*_times`` counter fires for that many responses (``None``: forever) and then
    disarms itself (value back to ``None``, counter back to 1), so setting the value again re-arms it.
    """

    drop_after: int | None = None  # CDN: send this many body bytes, then close the connection
    drop_times: int | None = 1
    status_503: int = 0  # the next N resolve/CDN requests answer 503 with Retry-After: 0
    stall_after: int | None = None  # CDN: send this many body bytes, then go silent...
    stall_seconds: float = 0.0  # ...for this long, then continue
    stall_times: int | None = 1
    sha256_override: str | None = None  # resolve reports this as X-Linked-Etag
    corrupt_at: int | None = None  # CDN: flip the byte at this absolute file offset
    rate: int | None = None  # CDN: bytes/second per connection
    ignore_range: bool = False  # CDN: answer ranged requests with 200 and the whole file
    gated: bool = False  # resolve answers 401 GatedRepo whatever the token

    def reset(self) -> None:
        """Switch every fault off, in place (tests hold a reference to this object)."""
        for name, value in asdict(Faults()).items():
            setattr(self, name, value)

    def update(self, values: Mapping[str, Any]) -> None:
        """Set fields from a JSON-like mapping; raise ValueError on unknown fields or bad types."""
        checked = {name: _check_fault_value(name, value) for name, value in values.items()}
        for name, value in checked.items():
            setattr(self, name, value)


def _check_fault_value(name: str, value: Any) -> Any:
    hints = get_type_hints(Faults)
    if name not in hints:
        raise ValueError(f"unknown fault {name!r}")
    allowed = get_args(hints[name]) or (hints[name],)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass: only accept it where bool itself is allowed.
    if type(value) in allowed:
        return value
    raise ValueError(f"fault {name!r} cannot be {value!r}")


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    if_range: str | None
    authorization: bool
    host: str | None
    status: int


@dataclass
class MirrorStats:
    bytes_served: int = 0  # body bytes actually written on the CDN route
    requests: list[RequestRecord] = field(default_factory=list)

    def reset(self) -> None:
        self.bytes_served = 0
        self.requests.clear()


FAULTS: web.AppKey[Faults] = web.AppKey("mirror_faults", Faults)
STATS: web.AppKey[MirrorStats] = web.AppKey("mirror_stats", MirrorStats)


def _arm(faults: Faults, value_field: str, times_field: str) -> Any:
    """The fault's value if it fires for this response (counting one use), else None."""
    value = getattr(faults, value_field)
    times = getattr(faults, times_field)
    if value is None or (times is not None and times <= 0):
        return None
    if times == 1:
        setattr(faults, value_field, None)  # last use: disarm, leaving the counter at 1
    elif times is not None:
        setattr(faults, times_field, times - 1)
    return value


def _take_503(faults: Faults) -> web.Response | None:
    if faults.status_503 <= 0:
        return None
    faults.status_503 -= 1
    return _error(503, None, "Service temporarily unavailable", {"Retry-After": "0"})


def _error(
    status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    extra = dict(headers or {})
    if code:
        extra["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=extra)


# --- paths -------------------------------------------------------------------------------------


class _BadPath(Exception):
    """A request path that tries to leave ROOT."""


def _segments(value: str, *, single: bool = False) -> list[str]:
    """Split a request path component into safe segments, or raise _BadPath."""
    parts = value.split("/")
    if (single and len(parts) != 1) or "\\" in value or "\0" in value:
        raise _BadPath(value)
    if any(p in ("", ".", "..") for p in parts):
        raise _BadPath(value)
    return parts


def _is_hidden(relpath: str) -> bool:
    return relpath.endswith(_SIDECAR) or any(p.startswith(".") for p in relpath.split("/"))


@dataclass(frozen=True)
class _Entry:
    relpath: str  # posix, relative to the repo folder
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Repo:
    commit: str
    entries: dict[str, _Entry]  # visible files only

    @staticmethod
    def scan(repo_dir: Path) -> _Repo | None:
        """Blocking: list the repo folder (run in a thread). None if it is not a folder."""
        if not repo_dir.is_dir():
            return None
        found: list[_Entry] = []
        for dirpath, dirnames, filenames in os.walk(repo_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                path = Path(dirpath, name)
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished or a broken link
                rel = path.relative_to(repo_dir).as_posix()
                found.append(_Entry(rel, path, st.st_size, st.st_mtime_ns))
        found.sort(key=lambda e: e.relpath)
        # Sidecars count towards the commit: a new checksum is a new version of the repo.
        digest = hashlib.sha1()
        for e in found:
            digest.update(f"{e.relpath}\0{e.size}\0{e.mtime_ns}\n".encode())
        visible = {e.relpath: e for e in found if not _is_hidden(e.relpath)}
        return _Repo(digest.hexdigest(), visible)


# --- sha256 ------------------------------------------------------------------------------------


def _hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Sha256Cache:
    """sha256 per file, from a sidecar or hashed once in a thread per (size, mtime)."""

    def __init__(self) -> None:
        self._done: dict[Path, tuple[int, int, str]] = {}
        self._running: dict[tuple[Path, int, int], asyncio.Task[str]] = {}

    async def get(self, entry: _Entry) -> str:
        if sidecar := await self._sidecar(entry.path):
            return sidecar
        cached = self._done.get(entry.path)
        if cached and cached[:2] == (entry.size, entry.mtime_ns):
            return cached[2]
        key = (entry.path, entry.size, entry.mtime_ns)
        task = self._running.get(key)
        if task is None:
            # One hash per file even when several connections resolve it at once.
            task = asyncio.create_task(asyncio.to_thread(_hash_file, entry.path))
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        sha = await asyncio.shield(task)
        self._done[entry.path] = (entry.size, entry.mtime_ns, sha)
        return sha

    @staticmethod
    async def _sidecar(path: Path) -> str | None:
        try:
            async with aiofiles.open(f"{path}{_SIDECAR}", encoding="ascii", errors="replace") as f:
                text = await f.read(4096)
        except OSError:
            return None
        token = (text.split() or [""])[0].lower()
        return token if _SHA256_RE.fullmatch(token) else None


# --- ranges ------------------------------------------------------------------------------------


class _Unsatisfiable(Exception):
    pass


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range; None to send the whole file."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges may be ignored (RFC 9110 14.2)
    first, sep, last = (part.strip() for part in spec.partition("-"))
    if not sep or not (first or last) or not (first + last).isdecimal():
        return None  # syntactically invalid: ignore
    if not first:  # suffix: the last N bytes
        if int(last) == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        raise _Unsatisfiable
    if end < start:
        return None
    return start, min(end, size - 1)


def _cdn_etag(size: int, mtime_ns: int) -> str:
    # Deliberately not the sha256: the Hub's CDN has its own ETag, and clients must not mix them.
    return f'"{mtime_ns:x}-{size:x}"'


# --- body streaming ----------------------------------------------------------------------------


class _Pacer:
    """Sleep-based per-connection rate limit that follows changes to Faults.rate."""

    def __init__(self) -> None:
        self._rate: int | None = None
        self._start = 0.0
        self._sent = 0

    async def after(self, n: int, rate: int | None) -> None:
        if not rate:
            self._rate = None
            return
        if rate != self._rate:
            self._rate, self._start, self._sent = rate, time.monotonic(), 0
        self._sent += n
        delay = self._start + self._sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _corrupt(chunk: bytes, offset: int, at: int | None) -> bytes:
    if at is None or not offset <= at < offset + len(chunk):
        return chunk
    flipped = bytearray(chunk)
    flipped[at - offset] ^= 0xFF
    return bytes(flipped)


async def _send_body(
    request: web.Request,
    resp: web.StreamResponse,
    entry: _Entry,
    start: int,
    length: int,
) -> None:
    faults, stats = request.app[FAULTS], request.app[STATS]
    drop_at: int | None = _arm(faults, "drop_after", "drop_times")
    stall_at: int | None = _arm(faults, "stall_after", "stall_times")
    stall_seconds = faults.stall_seconds
    pacer = _Pacer()
    sent = 0
    await resp.write(b"")  # flush the headers now, so a drop or stall at 0 still has them sent
    async with aiofiles.open(entry.path, "rb") as f:
        await f.seek(start)
        while True:
            if stall_at is not None and sent >= stall_at:
                stall_at = None
                await asyncio.sleep(stall_seconds)
            if drop_at is not None and sent >= drop_at:
                _hard_drop(request)
                return
            if sent >= length:
                return
            n = min(PACED_CHUNK if faults.rate else CHUNK, length - sent)
            for limit in (stall_at, drop_at):  # stop exactly at a fault's offset
                if limit is not None:
                    n = min(n, limit - sent)
            chunk = await f.read(n)
            if not chunk:
                _hard_drop(request)  # the file shrank under us: never pad it
                return
            try:
                await resp.write(_corrupt(chunk, start + sent, faults.corrupt_at))
            except ConnectionResetError:
                return  # the client went away (a cancel, a stolen part): nothing to report
            sent += len(chunk)
            stats.bytes_served += len(chunk)
            await pacer.after(len(chunk), faults.rate)


def _hard_drop(request: web.Request) -> None:
    # close() flushes what is buffered, then FINs: the client sees a body shorter than declared.
    if request.transport is not None:
        request.transport.close()


# --- the application ---------------------------------------------------------------------------


class _Mirror:
    def __init__(self, root: Path, cdn_base: str | None, token: str | None) -> None:
        self.root = root
        self.cdn_base = cdn_base.rstrip("/") if cdn_base else None
        self.token = token
        self.sha256 = _Sha256Cache()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/cdn/{org}/{repo}/{sha256:[0-9a-f]{64}}/{filename:.+}", self.cdn),
            web.get("/api/models/{org}/{repo}/tree/{revision}", self.tree),
            web.get("/{org}/{repo}/resolve/{revision}/{filename:.+}", self.resolve),
        ]

    async def _repo(self, request: web.Request) -> _Repo | web.Response:
        """The repo named in the URL, or the error response to send."""
        try:
            org = _segments(request.match_info["org"], single=True)[0]
            name = _segments(request.match_info["repo"], single=True)[0]
        except _BadPath:
            return _error(400, None, "Invalid path")
        repo = None
        if not _is_hidden(f"{org}/{name}"):
            repo = await asyncio.to_thread(_Repo.scan, self.root / org / name)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        return repo

    async def _entry(self, request: web.Request) -> tuple[_Repo, _Entry] | web.Response:
        repo = await self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        try:
            relpath = "/".join(_segments(request.match_info["filename"]))
        except _BadPath:
            return _error(400, None, "Invalid path")
        entry = repo.entries.get(relpath)
        if entry is None:
            return _error(404, "EntryNotFound", "Entry not found")
        return repo, entry

    def _denied(self, request: web.Request, *, gated: bool = False) -> web.Response | None:
        if not gated and self.token is None:
            return None
        given = request.headers.get("Authorization", "")
        if not gated and hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return None
        repo_id = f"{request.match_info['org']}/{request.match_info['repo']}"
        message = (
            f"Access to model {repo_id} is restricted. You must have access to it "
            "and be authenticated to access it. Please log in."
        )
        return _error(401, "GatedRepo", message)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        faults = request.app[FAULTS]
        # Responses are mappings (empty ones are falsy): compare with None, never test truth.
        refused = _take_503(faults)
        if refused is None:
            refused = self._denied(request, gated=faults.gated)
        if refused is not None:
            return refused
        found = await self._entry(request)
        if isinstance(found, web.Response):
            return found
        repo, entry = found
        sha = await self.sha256.get(entry)
        linked_etag = f'"{faults.sha256_override or sha}"'
        base = self.cdn_base or str(request.url.origin())
        org, name = request.match_info["org"], request.match_info["repo"]
        location = f"{base}/cdn/{quote(org)}/{quote(name)}/{sha}/{quote(entry.relpath)}"
        headers = {
            "Location": location,
            "X-Repo-Commit": repo.commit,
            "X-Linked-Etag": linked_etag,
            "X-Linked-Size": str(entry.size),
            "ETag": linked_etag,
            "Content-Length": "0",
        }
        return web.Response(status=302, headers=headers)

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        if (busy := _take_503(request.app[FAULTS])) is not None:
            return busy
        found = await self._entry(request)
        if isinstance(found, web.Response):
            return found
        _, entry = found
        if await self.sha256.get(entry) != request.match_info["sha256"]:
            return _error(404, None, "This file changed since it was resolved")
        return await self._serve_bytes(request, entry)

    async def _serve_bytes(self, request: web.Request, entry: _Entry) -> web.StreamResponse:
        etag = _cdn_etag(entry.size, entry.mtime_ns)
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if request.app[FAULTS].ignore_range or (if_range is not None and if_range != etag):
            range_header = None
        try:
            span = _parse_range(range_header, entry.size)
        except _Unsatisfiable:
            headers["Content-Range"] = f"bytes */{entry.size}"
            return web.Response(status=416, headers=headers)
        start, end = span or (0, entry.size - 1)
        if span:
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        resp = web.StreamResponse(status=206 if span else 200, headers=headers)
        resp.content_type = "application/octet-stream"
        resp.content_length = end - start + 1
        await resp.prepare(request)
        if request.method == "GET":
            await _send_body(request, resp, entry, start, end - start + 1)
        return resp

    async def tree(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        repo = await self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        return web.json_response([await self._tree_item(e) for e in repo.entries.values()])

    async def _tree_item(self, entry: _Entry) -> dict[str, Any]:
        sha = await self.sha256.get(entry)
        # The git blob a Hub repo stores for an LFS file is this pointer; its sha1 is the oid.
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {entry.size}\n"
        )
        blob = f"blob {len(pointer)}\0{pointer}".encode()
        return {
            "type": "file",
            "oid": hashlib.sha1(blob).hexdigest(),
            "size": entry.size,
            "path": entry.relpath,
            "lfs": {"oid": sha, "size": entry.size, "pointerSize": len(pointer)},
        }


# --- stats and control -------------------------------------------------------------------------


async def _record_request(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: recorded before the client can see the response."""
    if request.path.startswith("/_mirror/"):
        return
    request.app[STATS].requests.append(
        RequestRecord(
            method=request.method,
            path=request.path,
            range=request.headers.get("Range"),
            if_range=request.headers.get("If-Range"),
            authorization="Authorization" in request.headers,
            host=request.headers.get("Host"),
            status=response.status,
        )
    )


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[FAULTS]))


async def _set_faults(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        request.app[FAULTS].update(body)
    except (ValueError, json.JSONDecodeError) as exc:
        return _error(400, None, str(exc))
    return await _get_faults(request)


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[STATS]))


async def _reset(request: web.Request) -> web.Response:
    request.app[FAULTS].reset()
    request.app[STATS].reset()
    return web.json_response({"reset": True})


def create_mirror_app(
    root: Path,
    *,
    cdn_base: str | None = None,
    token: str | None = None,
    faults: Faults | None = None,
    control: bool = False,
) -> web.Application:
    """An aiohttp app serving ``root/<org>/<repo>/<file>`` like the Hub (see module docstring)."""
    app = web.Application()
    app[FAULTS] = faults if faults is not None else Faults()
    app[STATS] = MirrorStats()
    if control:
        app.add_routes(
            [
                web.get("/_mirror/faults", _get_faults),
                web.post("/_mirror/faults", _set_faults),
                web.get("/_mirror/stats", _get_stats),
                web.post("/_mirror/reset", _reset),
            ]
        )
    app.add_routes(_Mirror(Path(root).resolve(), cdn_base, token).routes())
    app.on_response_prepare.append(_record_request)
    return app


async def run_mirror(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8900,
    *,
    cdn_base: str | None = None,
    token: str | None = None,
    control: bool = False,
) -> None:
    """Serve ``root`` until cancelled."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"mirror root {root} is not a directory")
    app = create_mirror_app(root, cdn_base=cdn_base, token=token, control=control)
    # A short shutdown: a multi-GB response in flight must not hold up Ctrl-C for a minute.
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        real_port = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        log.info("mirror serving %s on http://%s:%d", root, shown, real_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
