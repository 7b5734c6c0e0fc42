"""The part scheduler: how a file is split, and how an idle connection takes work."""

from __future__ import annotations

from lawchatd.fetch.plan import MIN_PART, PARTS_PER_CONNECTION, PartPlan, tiles
from lawchatd.state.store import Part

MiB = 1 << 20


def test_split_tiles_the_file_and_keeps_parts_worth_a_connection():
    size = 3825812864
    parts = PartPlan.split(size, 4).parts
    assert len(parts) == 4 and tiles(parts, size)
    assert len(PartPlan.split(MIN_PART * 2, 16).parts) == 2
    assert PartPlan.split(1000, 4).parts == [Part(0, 1000)]


def test_the_last_round_of_parts_is_cut_finer_so_the_hash_has_little_left_at_the_end():
    size = 1 << 30
    parts = PartPlan.split(size, 4, PARTS_PER_CONNECTION).parts
    assert tiles(parts, size)
    sizes = [p.end - p.start for p in parts]
    assert sizes[:28] == [32 * MiB] * 28  # 8 per connection, the last round of 4 ...
    assert sizes[28:] == [8 * MiB] * 16  # ... in parts four times smaller
    assert len(PartPlan.split(5 * MiB, 4, PARTS_PER_CONNECTION).parts) == 1
    assert PartPlan.split(0, 4, PARTS_PER_CONNECTION).parts == []  # an empty file: no part
    for odd in (size + 1, size + 12345, 3825812864, 7161089056, 64 * MiB + 3):
        for connections in (1, 2, 4, 8, 16):
            parts = PartPlan.split(odd, connections, PARTS_PER_CONNECTION).parts
            assert tiles(parts, odd), (odd, connections)
            # none shorter than MIN_PART, but for the rounding of equal steps (a few bytes)
            assert min(p.end - p.start for p in parts) >= MIN_PART - 64, (odd, connections)


def test_an_idle_connection_takes_half_of_the_largest_running_part():
    parts = [Part(0, 100 * MiB, 100 * MiB), Part(100 * MiB, 200 * MiB, 10 * MiB),
             Part(200 * MiB, 300 * MiB, 80 * MiB)]  # fmt: skip
    plan = PartPlan(300 * MiB, parts)
    plan.busy = {100 * MiB, 200 * MiB}
    stolen = plan.claim()
    # The largest remainder is the second part's 90 MiB: the new part takes its upper half.
    assert stolen == Part(155 * MiB, 200 * MiB)
    assert plan.parts[1].end == 155 * MiB
    assert tiles(plan.parts, 300 * MiB)
    assert stolen.start in plan.busy


def test_unclaimed_parts_come_first_and_small_remainders_are_left_alone():
    parts = [Part(0, 10 * MiB, 2 * MiB), Part(10 * MiB, 16 * MiB)]
    plan = PartPlan(16 * MiB, parts)
    plan.busy = {0}
    assert plan.claim() is parts[1]
    assert plan.claim() is None  # 8 and 6 MiB left: not worth splitting


def test_a_steal_never_counts_bytes_twice():
    plan = PartPlan(20 * MiB, [Part(0, 20 * MiB, 2 * MiB)])
    plan.busy = {0}
    stolen = plan.claim()
    assert stolen == Part(11 * MiB, 20 * MiB)
    # The first connection had 12 MiB in flight past its old offset: only 9 MiB are its own.
    assert plan.record(plan.parts[0], 12 * MiB) == 9 * MiB
    assert plan.parts[0].remaining == 0 and plan.done == 11 * MiB
    assert plan.frontier() == 11 * MiB


def test_the_frontier_is_the_end_of_the_finished_prefix():
    plan = PartPlan(30, [Part(0, 10, 10), Part(10, 20, 4), Part(20, 30, 10)])
    assert plan.frontier() == 14 and not plan.complete
    plan.record(plan.parts[1], 6)
    assert plan.frontier() == 30 and plan.complete


def test_resume_trusts_the_store_only_as_far_as_the_disk_holds():
    stored = [Part(0, 10, 10, 10), Part(10, 20, 8, 5), Part(20, 30, 9, 0)]
    plan = PartPlan.resume(30, stored, on_disk=16)
    assert plan is not None
    assert [p.done for p in plan.parts] == [10, 6, 0]
    assert [p.synced for p in plan.parts] == [10, 5, 0]
    assert PartPlan.resume(30, stored, on_disk=None) is None  # the file is gone
    assert PartPlan.resume(30, [Part(0, 10), Part(12, 30)], on_disk=30) is None  # a gap
    assert PartPlan.resume(40, stored, on_disk=30) is None  # another size


def test_after_a_reboot_only_synced_bytes_are_trusted():
    from lawchatd.fetch.journal import boot_id, trusted

    here = [Part(0, 10, 8, 3)]
    assert trusted(here, boot_id())[0].done == 8  # a killed process: the page cache has them
    other = [Part(0, 10, 8, 3)]
    assert trusted(other, "another-boot")[0].done == 3  # a reboot: only what was fsynced


def test_one_stream_keeps_the_finished_prefix_and_what_is_durable():
    plan = PartPlan(30, [Part(0, 10, 10, 10), Part(10, 20, 7, 4), Part(20, 30, 10, 10)])
    single = plan.one_stream()
    assert single.parts == [Part(0, 30, 17, 14)]
    assert single.frontier() == 17


def test_a_take_over_moves_the_whole_rest_of_a_part_to_a_new_one():
    plan = PartPlan(20 * MiB, [Part(0, 10 * MiB, 10 * MiB), Part(10 * MiB, 20 * MiB, 1 * MiB)])
    plan.busy = {10 * MiB}
    rest = plan.take_over(plan.parts[1])
    assert rest == Part(11 * MiB, 20 * MiB) and rest.start in plan.busy
    assert plan.parts[1].remaining == 0 and tiles(plan.parts, 20 * MiB)
    # The slow connection's bytes still in flight count for nothing: the new part has them.
    assert plan.record(plan.parts[1], 256 << 10) == 0
    assert plan.take_over(Part(0, 5, 0)) is None  # nothing done yet: no part may share a start
