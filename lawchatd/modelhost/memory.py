"""What a model will cost in memory, and what the daemon may use.

Cost (measured on law-chat's 7B Q4_0 shape, see bench/README.md): the weights as read
(about the file size; no second copy because we load without mmap), the KV cache (f16 K and
V for every layer and every cell of the context) and llama.cpp's compute buffers.

Room: the smaller of the kernel's MemAvailable and what the cgroup's limit leaves (v2
``memory.max``, v1 ``memory.limit_in_bytes``; systemd's MemoryMax= and containers set them),
counting what this process already holds. ``LAWCHATD_MEMORY_MAX`` is read like a cgroup
limit for tests and benchmarks on machines where no cgroup can be made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lawchatd.modelhost.errors import ModelTooLarge
from lawchatd.modelhost.ggufmeta import ModelShape

log = logging.getLogger(__name__)

MIN_CTX = 512
N_BATCH = 512  # tokens per llama_decode: llama-cpp-python's default
CTX_STEP = 256
_UNLIMITED = 1 << 62


def compute_bytes(shape: ModelShape, n_ctx: int) -> int:
    """llama.cpp's compute buffer for a 512-token ubatch: a ubatch of f32 logits, attention
    scratch growing with the context, and a fixed part. Fitted to its own report ("CPU
    compute buffer size = 100.51 MiB" for the 7B shape at n_ctx 4096) with a few % spare."""
    ubatch = min(N_BATCH, n_ctx)
    return shape.n_vocab * ubatch * 4 + 2 * n_ctx * ubatch * 4 + (24 << 20)


@dataclass(frozen=True)
class Cost:
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


def model_cost(shape: ModelShape, n_ctx: int, n_seq: int) -> Cost:
    """``n_seq`` slots share the KV cache (unified), so they add only rows of logits."""
    return Cost(
        weights=shape.file_size,
        kv_cache=shape.kv_bytes_per_token * n_ctx,
        compute=compute_bytes(shape, n_ctx) + n_seq * shape.n_vocab * 4,
    )


def fit_context(shape: ModelShape, room: int, n_seq: int) -> int:
    """The largest n_ctx up to the trained one whose cost fits in ``room`` (0 if none)."""
    n_ctx = shape.n_ctx_train
    while n_ctx >= MIN_CTX:
        if model_cost(shape, n_ctx, n_seq).total <= room:
            return n_ctx
        n_ctx = (n_ctx - 1) // CTX_STEP * CTX_STEP
    return 0


def plan(
    variant: str, shape: ModelShape, room: int, n_ctx: int | None, n_seq: int
) -> tuple[int, Cost]:
    """The context to load ``variant`` with (``n_ctx``, or None: the largest up to the trained
    one that fits in ``room``) and its cost; ModelTooLarge when nothing fits."""
    if n_ctx is None:
        n_ctx = fit_context(shape, room, n_seq)
        if 0 < n_ctx < shape.n_ctx_train:
            log.warning(
                "%s: context lowered from %d to %d tokens: the KV cache for %d would not "
                "fit in %s", variant, shape.n_ctx_train, n_ctx, shape.n_ctx_train, gib(room),
            )  # fmt: skip
        n_ctx = n_ctx or MIN_CTX
    cost = model_cost(shape, n_ctx, n_seq)
    if cost.total > room:
        raise ModelTooLarge(
            f"{variant} does not fit in memory: it needs {gib(cost.total)} "
            f"(weights {gib(cost.weights)}, KV cache for {n_ctx} tokens "
            f"{gib(cost.kv_cache)}, compute {gib(cost.compute)}) and the "
            f"daemon may use {gib(room)}",
            needed=cost.total,
            available=room,
        )
    return n_ctx, cost


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value  # v1 writes "no limit" as a huge number


def _own_cgroup_dirs(proc_cgroup: Path = Path("/proc/self/cgroup")) -> list[Path]:
    dirs = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":
            dirs.append(Path("/sys/fs/cgroup") / rel)  # v2
        elif "memory" in controllers.split(","):
            dirs.append(Path("/sys/fs/cgroup/memory") / rel)  # v1
    return dirs


def cgroup_limit() -> int | None:
    """The tightest memory limit on this process's cgroup or its parents."""
    limits = []
    for d in _own_cgroup_dirs():
        while True:
            for name in ("memory.max", "memory.limit_in_bytes"):
                value = _read_int(d / name)
                if value is not None:
                    limits.append(value)
            if d.parent == d or d.name in ("cgroup", "memory"):
                break
            d = d.parent
    return min(limits, default=None)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return _UNLIMITED


def process_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Room:
    available: int  # bytes a new model may take now
    limit: int | None  # the cgroup / setting limit, if any
    in_use: int  # this process's RSS


def room(memory_max: int | None) -> Room:
    """Bytes this process may still take, from the kernel's and the limits' view."""
    limits = [v for v in (cgroup_limit(), memory_max) if v is not None]
    limit = min(limits, default=None)
    rss = process_rss()
    available = mem_available()
    if limit is not None:
        available = min(available, max(limit - rss, 0))
    return Room(available, limit, rss)


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
