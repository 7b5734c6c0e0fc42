"""Free slots (KV sequence ids) and the tokens each still holds in the KV cache.

A finished request leaves its cells in place: the next request whose prompt starts the same
way (a follow-up in the same conversation resends the whole history) takes that slot and
skips feeding the shared prefix again. Cached cells are dropped first when room is short.
"""

from __future__ import annotations


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Slots:
    def __init__(self, n: int) -> None:
        self._free: dict[int, list[int]] = {i: [] for i in range(n)}
        self._trims: list[tuple[int, int]] = []  # (seq_id, first position to drop)

    def __bool__(self) -> bool:
        return bool(self._free)

    @property
    def cached_cells(self) -> int:
        return sum(len(tokens) for tokens in self._free.values())

    def take(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot sharing the longest prefix with ``prompt``: (seq_id, cells reused).
        At least the prompt's last token is fed again: its logits start the answer."""
        shared = {i: common_prefix(tokens, prompt) for i, tokens in self._free.items()}
        seq_id = max(shared, key=shared.__getitem__)
        cached = self._free.pop(seq_id)
        reused = min(shared[seq_id], len(prompt) - 1)
        if reused < len(cached):
            self._trims.append((seq_id, reused))
        return seq_id, reused

    def give_back(self, seq_id: int, tokens_in_kv: list[int]) -> None:
        self._free[seq_id] = tokens_in_kv

    def drop(self, seq_id: int) -> None:
        """Back as free with its cells removed (a preempted request)."""
        self._free[seq_id] = []
        self._trims.append((seq_id, 0))

    def evict(self) -> bool:
        """Drop every cached prefix; False if there was none."""
        held = [i for i, tokens in self._free.items() if tokens]
        for seq_id in held:
            self._free[seq_id] = []
            self._trims.append((seq_id, 0))
        return bool(held)

    def pop_trims(self) -> list[tuple[int, int]]:
        trims, self._trims = self._trims, []
        return trims
