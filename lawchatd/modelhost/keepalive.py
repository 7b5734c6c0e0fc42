"""Keep-alive: ``seconds`` without chat unload the answering model to give its memory back.

It stays "asleep" (its name still shown, see swap.Asleep) and the next chat request loads it
again and waits for it (admission.py). The timer is re-armed after every load and request;
when it fires it looks at the engine's own last use, so a long answer is not cut short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from lawchatd.modelhost.load_lock import LoadLock
from lawchatd.modelhost.swap import Resident, Swapper

log = logging.getLogger(__name__)


class KeepAlive:
    def __init__(
        self,
        seconds: float | None,
        swapper: Swapper,
        lock: LoadLock,
        on_sleep: Callable[[Resident], None],
    ) -> None:
        self.seconds = seconds  # None: never unload
        self._swapper = swapper
        self._lock = lock
        self._on_sleep = on_sleep
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def arm(self) -> None:
        if self.seconds is None or self._stopped:
            return
        if self._timer:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.seconds, self._on_idle)

    def stop(self) -> None:
        self._stopped = True
        if self._timer:
            self._timer.cancel()

    def _on_idle(self) -> None:
        self._timer = None
        cur = self._swapper.current
        if cur is None or self._lock.busy or self.seconds is None:
            return  # the load that runs arms the timer again when it ends
        idle_for = time.monotonic() - cur.engine.last_used
        if cur.engine.load or idle_for < self.seconds:
            self.arm()
            return
        log.info("model %s unloaded after %.0f s without chat", cur.variant, idle_for)
        self._swapper.put_to_sleep()
        self._on_sleep(cur)
