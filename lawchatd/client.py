"""`lawchatd pull` and `lawchatd status`: a shell's view of the running daemon."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import TextIO

import aiohttp

from lawchatd.config import Settings

# Exit codes scripts can rely on (also in the README).
OK, FAILED, USAGE, UNREACHABLE, UNAUTHORIZED, BUSY, NO_SPACE, INTERRUPTED = 0, 1, 2, 3, 4, 5, 6, 130


class ClientError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _units(count: float, suffix: str = "B") -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(count) < 1000 or unit == "T":
            return f"{count:.1f} {unit}{suffix}" if unit else f"{count:.0f} {suffix}"
        count /= 1000
    return f"{count:.1f} T{suffix}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_bar(p: dict, width: int = 30) -> str:
    """`law-chat-q4_0  43% [#####....] 1.6 GB/3.8 GB  52.1 MB/s  ETA 42s  downloading`."""
    percent = float(p.get("progress") or 0)
    filled = int(width * percent / 100)
    bar = "#" * filled + "." * (width - filled)
    speed = f"{_units(p['speed'])}/s" if p.get("speed") else "--"
    sizes = f"{_units(p.get('downloaded_size') or 0)}/{_units(p.get('total_size') or 0)}"
    phase = p.get("phase") or p.get("status")
    return (
        f"{p.get('model_variant')}  {percent:5.1f}% [{bar}] {sizes}  {speed}  "
        f"ETA {_duration(p.get('eta'))}  {phase}"
    )


class DaemonClient:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.daemon_url
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self._key = key
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        )

    async def close(self) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        # Always declared JSON: the daemon refuses other bodies (415), and aiohttp would
        # otherwise label an empty POST application/octet-stream.
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.request(
                method, self.base + path, json=body, headers=headers
            ) as resp:
                data = await resp.json(content_type=None)
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(f"cannot reach lawchatd at {self.base}: {exc}", UNREACHABLE) from exc
        if resp.status >= 400:
            detail = data.get("detail") if isinstance(data, dict) else str(data)
            code = {401: UNAUTHORIZED, 409: BUSY, 507: NO_SPACE, 400: USAGE, 422: USAGE}
            raise ClientError(detail or f"HTTP {resp.status}", code.get(resp.status, FAILED))
        return data

    def progress_socket(self):
        url = self.base + "/ws/progress"
        return self._session.ws_connect(url, heartbeat=20)


async def pull(settings: Settings, variant: str, force: bool, out: TextIO) -> int:
    client = DaemonClient(settings)
    try:
        return await _pull(client, variant, force, out)
    except ClientError as exc:
        print(f"lawchatd pull: {exc}", file=sys.stderr)
        return exc.code
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 401:
            print("lawchatd pull: Invalid or missing API key (LAWCHATD_API_KEY)", file=sys.stderr)
            return UNAUTHORIZED
        print(f"lawchatd pull: the progress socket was refused: {exc.status}", file=sys.stderr)
        return FAILED
    except aiohttp.ClientConnectionError as exc:
        print(f"lawchatd pull: cannot reach lawchatd at {client.base}: {exc}", file=sys.stderr)
        return UNREACHABLE
    finally:
        await client.close()


async def _pull(client: DaemonClient, variant: str, force: bool, out: TextIO) -> int:
    # Listen first, so no progress is missed between the request and the first message.
    async with client.progress_socket() as ws:
        reply = await client.call(
            "POST",
            "/models/download",
            {"model_variant": variant, "force": force, "queue": True},
        )
        if reply["status"] == "already_downloaded":
            print(f"{variant} is already downloaded", file=out)
            return OK
        if reply["status"] == "queued":
            print(_queued_line(variant, reply.get("position")), file=out, flush=True)
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        try:
            final = await _follow(ws, variant, out, interrupted)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        if final is None:
            print(f"\n{await _stop(client, variant)}", file=out)
            return INTERRUPTED
    if final["status"] == "completed":
        print(f"{variant}: downloaded and verified", file=out)
        return OK
    print(f"{variant}: {final['status']}: {final.get('error') or ''}".rstrip(": "), file=out)
    return FAILED


async def _stop(client: DaemonClient, variant: str) -> str:
    """Ctrl-C: leave the queue if still in it; else cancel (our variant is the one running)."""
    try:
        return (await client.call("DELETE", f"/downloads/{variant}"))["message"]
    except ClientError:
        pass  # not queued (any more): it may be running
    progress = await client.call("GET", "/models/download-progress")
    if progress.get("model_variant") != variant or progress.get("status") != "downloading":
        return f"{variant} is neither queued nor downloading; nothing to stop"  # never another's
    return (await client.call("POST", "/models/cancel-download"))["message"]


def _queued_line(variant: str, position: int | None) -> str:
    place = f" (number {position} in the queue)" if position else ""
    return (
        f"{variant} is queued behind the running download{place}; "
        "its progress shows here when it starts (Ctrl-C leaves the queue)"
    )


ERASE = "\x1b[K"  # the terminal's "erase to the end of the line"


async def _follow(ws, variant: str, out: TextIO, interrupted: asyncio.Event) -> dict | None:
    """Draw the bar until the download ends; None when the user pressed Ctrl-C."""
    tty = out.isatty()
    last_line_at = 0.0
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        while True:
            receive = asyncio.ensure_future(ws.receive())
            await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                receive.cancel()
                return None
            frame = receive.result()
            if frame.type != aiohttp.WSMsgType.TEXT:  # the daemon stopped or dropped us
                raise ClientError("lost the connection to lawchatd", UNREACHABLE)
            message = frame.json()
            if message.get("type") not in ("snapshot", "progress"):
                continue
            if message.get("model_variant") != variant:
                continue
            if message["status"] != "downloading" and message["type"] == "progress":
                # Erase to the end of the line: the last bar is shorter than the ones before.
                out.write(
                    ("\r" + progress_bar(message) + ERASE if tty else progress_bar(message)) + "\n"
                )
                return message
            now = time.monotonic()
            if tty:
                out.write("\r" + progress_bar(message) + ERASE)
                out.flush()
            elif now - last_line_at >= 2:  # a log file gets a line every few seconds
                out.write(progress_bar(message) + "\n")
                out.flush()
                last_line_at = now
    finally:
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop


async def status(settings: Settings, out: TextIO) -> int:
    client = DaemonClient(settings)
    try:
        available = await client.call("GET", "/models/available")
        loaded = await client.call("GET", "/models/loaded")
        downloads = (await client.call("GET", "/downloads"))["downloads"]
    except ClientError as exc:
        print(f"lawchatd status: {exc}", file=sys.stderr)
        return exc.code
    finally:
        await client.close()
    queued = {d["model_variant"]: d["position"] for d in downloads if d["status"] == "queued"}
    print(format_status(available, loaded, queued), file=out)
    return OK


async def verify(settings: Settings, variant: str | None, out: TextIO) -> int:
    """Hash VARIANT's file again (or every downloaded one): 0 when all are intact."""
    client = DaemonClient(settings)
    try:
        if variant:
            variants = [variant]
        else:
            available = (await client.call("GET", "/models/available"))["available_models"]
            variants = [name for name, entry in available.items() if entry.get("downloaded")]
            if not variants:
                print("no model is downloaded: nothing to verify", file=out)
        worst = OK
        for name in variants:
            answer = await client.call("POST", "/models/verify", {"model_variant": name})
            print(answer["message"], file=out)
            if answer["result"] != "verified" and (variant or answer["result"] != "missing"):
                worst = FAILED
        return worst
    except ClientError as exc:
        print(f"lawchatd verify: {exc}", file=sys.stderr)
        return exc.code
    finally:
        await client.close()


def format_status(available: dict, loaded: dict, queued: dict[str, int] | None = None) -> str:
    queued = queued or {}
    progress = available["download_status"]
    rows = [("VARIANT", "SIZE", "STATE", "LOADED")]
    for variant, info in available["available_models"].items():
        if progress["model_variant"] == variant and progress["status"] == "downloading":
            state = f"downloading {progress['progress']:.0f}%"
        elif variant in queued:
            state = f"queued #{queued[variant]}"
        elif info["downloaded"]:
            state = "downloaded"
        elif info.get("partial_bytes"):
            state = f"partial {100 * info['partial_bytes'] / info['size']:.0f}%"
        else:
            state = "-"
        is_loaded = "*" if loaded.get("model_variant") == variant else ""
        rows.append((variant, _units(info["size"]), state, is_loaded))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    model = loaded.get("model_variant") or "none"
    lines.append("")
    lines.append(f"model: {model} ({loaded.get('status')})")
    if loaded.get("error"):
        lines.append(f"model error: {loaded['error']}")
    if progress["status"] != "idle":
        line = f"last download: {progress['model_variant']} {progress['status']}"
        if progress.get("error"):
            line += f": {progress['error']}"
        lines.append(line)
    return "\n".join(lines)
