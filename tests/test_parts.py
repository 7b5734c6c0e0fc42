"""The part scheduler: how a file is split, and how an idle connection takes work."""

from __future__ import annotations

from lawchatd.catalog import ModelSpec
from lawchatd.config import Settings
from lawchatd.download import MIN_PART, Download, split_parts
from lawchatd.store import Part

MiB = 1 << 20


def tile(parts: list[Part], size: int) -> bool:
    return (
        parts[0].start == 0
        and parts[-1].end == size
        and all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
    )


def test_split_tiles_the_file_and_keeps_parts_worth_a_connection():
    size = 3825812864
    parts = split_parts(size, 4)
    assert len(parts) == 4 and tile(parts, size)
    assert len(split_parts(MIN_PART * 2, 16)) == 2
    assert split_parts(1000, 4) == [Part(0, 1000)]


def download_with(parts: list[Part], busy: set[int]) -> Download:
    spec = ModelSpec("v", "o/r", "f.gguf", parts[-1].end)
    download = Download(
        spec, settings=Settings(_env_file=None), store=None, hub=None, on_change=print
    )  # type: ignore[arg-type]
    download.parts = parts
    download._busy = set(busy)
    return download


def test_an_idle_connection_takes_half_of_the_largest_running_part():
    parts = [Part(0, 100 * MiB, 100 * MiB), Part(100 * MiB, 200 * MiB, 10 * MiB),
             Part(200 * MiB, 300 * MiB, 80 * MiB)]  # fmt: skip
    download = download_with(parts, busy={100 * MiB, 200 * MiB})
    stolen = download._claim()
    # The largest remainder is the second part's 90 MiB: the new part takes its upper half.
    assert stolen == Part(155 * MiB, 200 * MiB)
    assert download.parts[1].end == 155 * MiB
    assert tile(download.parts, 300 * MiB)
    assert stolen.start in download._busy


def test_unclaimed_parts_come_first_and_small_remainders_are_left_alone():
    parts = [Part(0, 10 * MiB, 2 * MiB), Part(10 * MiB, 16 * MiB)]
    download = download_with(parts, busy={0})
    assert download._claim() is parts[1]
    assert download._claim() is None  # 8 and 6 MiB left: not worth splitting
