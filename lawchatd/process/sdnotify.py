"""systemd's notify protocol: READY, STATUS, STOPPING and the watchdog, over $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from lawchatd.state.progress import ProgressHub

log = logging.getLogger(__name__)


class Notifier:
    """Sends datagrams to systemd; does nothing when not started by systemd with Type=notify."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = None
        self._sock: socket.socket | None = None
        if address:
            # A leading '@' names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: the daemon goes on regardless
            log.debug("sd_notify failed: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd asks, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def keep_watchdog_fed(notifier: Notifier, interval: float) -> None:
    # A loop that stops turning stops this too, so systemd restarts a wedged daemon.
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)


def status_line(message: dict) -> str | None:
    """A human line for `systemctl status` from a progress message."""
    if message.get("type") == "model":
        event, variant = message.get("event"), message.get("model_variant")
        return {
            "loading": f"loading {variant}",
            "loaded": f"serving {variant}",
            "load_failed": f"loading {variant} failed",
        }.get(event)
    status, variant = message.get("status"), message.get("model_variant")
    if status == "downloading":
        phase = message.get("phase") or "downloading"
        if phase == "downloading":
            return f"downloading {variant} {int(message.get('progress') or 0)}%"
        return f"{phase} {variant}"
    if status in ("completed", "error", "cancelled"):
        return f"download of {variant} {status}"
    return None


async def relay_status(notifier: Notifier, hub: ProgressHub) -> None:
    """Follow the progress hub like a WebSocket client and tell systemd what is going on."""
    subscriber = hub.subscribe()
    last = None
    try:
        while True:
            for published in await subscriber.next_batch():
                line = status_line(published.message)
                if line and line != last:
                    notifier.send(f"STATUS={line}")
                    last = line
    finally:
        hub.unsubscribe(subscriber)
