"""What a process costs, read from /proc: CPU, page faults, memory (now, peak, sampled) and
the bytes queued on its TCP sockets. Shared by the bench scripts."""

from __future__ import annotations

import contextlib
import os
import threading

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.05


def counters(pid: int) -> tuple[float, float, int]:
    """(user s, system s, minor faults) of the whole process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, int(fields[7])


def cpu_seconds(pid: int) -> float:
    user, system, _ = counters(pid)
    return user + system


def status_kib(pid: int | str, key: str = "VmRSS") -> int:
    """A memory line of /proc/PID/status ("self": this process) in kB as the kernel counts
    them (KiB): VmRSS now, VmHWM the peak since exec; 0 if the line is missing."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """`status_kib` in decimal MB."""
    return status_kib(pid, key) * 1024 / 1e6


class RssSampler:
    """Samples a process's memory every 50 ms in a thread, so the event loop is never involved."""

    def __init__(self, pid: int, key: str = "VmRSS") -> None:
        self.pid, self.key = pid, key
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append(rss_mb(self.pid, self.key))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.samples.append(rss_mb(self.pid, self.key))

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)


def tcp_queues(port: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) -> (tx_queue, rx_queue) bytes for IPv4 sockets touching `port`."""
    found = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            local, remote = (int(c.split(":")[1], 16) for c in cols[1:3])
            if port in (local, remote):
                tx, rx = (int(v, 16) for v in cols[4].split(":"))
                found[(local, remote)] = (tx, rx)
    return found
