"""The row plan: packing offsets, chunks and the group schedule of the fused op."""
import numpy as np
import pytest

from cutrans._plan import make_plan, rows_per_chunk

T3, U3 = np.array([3, 1, 4]), np.array([2, 0, 1])  # 9, 1, 8 rows


def test_offsets_are_the_exclusive_cumsums():
    plan = make_plan(T3, U3)
    assert plan.offsets.tolist() == [0, 9, 10, 18] and plan.rows == 18
    assert plan.frame_offsets.tolist() == [0, 3, 4, 8]
    assert plan.label_offsets.tolist() == [0, 3, 4, 6]
    assert plan.max_sample_rows == 9


def row_coords(plan):
    """(b, t, u) of every row, from the definition of the packing."""
    out = []
    for b, (T, U) in enumerate(zip(plan.logit_len, plan.target_len)):
        out += [(b, t, u) for t in range(T) for u in range(U + 1)]
    return out


@pytest.mark.parametrize("n", [1, 4, 9, 10, 100])
@pytest.mark.parametrize("sample_wise", [False, True])
def test_schedule_covers_all_rows_once_in_order(n, sample_wise):
    plan = make_plan(T3, U3)
    groups = plan.schedule(n, None, sample_wise)
    chunks = [c for g in groups for c in g.chunks]
    covered = np.concatenate([np.arange(c.row0, c.row0 + c.n) for c in chunks])
    assert covered.tolist() == list(range(18)) and max(c.n for c in chunks) <= n
    assert [g.b0 for g in groups] + [groups[-1].b1] == \
        sorted({g.b0 for g in groups} | {groups[-1].b1})
    coords = row_coords(plan)
    frames = [(b, t) for b in range(3) for t in range(T3[b])]
    slots = [(b, u) for b in range(3) for u in range(U3[b] + 1)]
    for g in groups:
        assert g.row0 == plan.offsets[g.b0] and g.row1 == plan.offsets[g.b1]  # whole samples
        if sample_wise:
            assert g.b1 == g.b0 + 1
        for c in g.chunks:
            rows = coords[c.row0:c.row0 + c.n]
            assert {b for b, _, _ in rows} == set(range(c.b0, c.b1))
            # the chunk's frames are exactly frames[f0 : f0 + n_frames]
            assert sorted({(b, t) for b, t, _ in rows}) == frames[c.f0:c.f0 + c.n_frames]
            # label slots l0.. cover every (b, u) with a row in the chunk
            assert {(b, u) for b, _, u in rows} <= set(slots[c.l0:c.l0 + c.n_slots])
            assert c.split == (plan.offsets[c.b0 + 1] - plan.offsets[c.b0] > n)
            if c.split:
                assert c.b1 == c.b0 + 1
                assert c.first == (c.row0 == plan.offsets[c.b0])
                assert c.last == (c.row0 + c.n == plan.offsets[c.b0 + 1])


def test_resident_groups_pack_whole_samples_up_to_a_chunk():
    plan = make_plan(T3, U3)
    assert [(g.b0, g.b1, g.resident) for g in plan.schedule(10)] == [(0, 2, True), (2, 3, True)]
    assert [(g.b0, g.b1, g.resident) for g in plan.schedule(100)] == [(0, 3, True)]
    assert [(g.b0, g.b1) for g in plan.schedule(100, sample_wise=True)] == [(0, 1), (1, 2),
                                                                           (2, 3)]


def test_split_groups_hold_big_samples_within_the_state_rows():
    plan = make_plan(np.array([4, 4, 1, 4]), np.array([1, 1, 0, 1]))  # 8, 8, 1, 8 rows
    groups = plan.schedule(3, 16)
    assert [(g.b0, g.b1, g.resident) for g in groups] == [(0, 2, False), (2, 3, True),
                                                          (3, 4, False)]
    assert [c.n for c in groups[0].chunks] == [3, 3, 2, 3, 3, 2]  # samples never mix
    assert [(g.b0, g.b1) for g in plan.schedule(3, 8)] == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_rows_per_chunk_budget():
    assert rows_per_chunk(1000, 10, 100, 1 << 30) == 90
    assert rows_per_chunk(1000, 10, 100, 5) == 5
    with pytest.raises(ValueError, match="max_workspace_bytes=100 is too small"):
        rows_per_chunk(100, 10, 95, 5)


def test_device_plan_cache_is_freed_at_exit_before_teardown():
    """The cached device arrays go at exit, while every module still works (PyTorch's
    allocator frees them through Python callbacks): by cutrans's own handler (atexit runs
    last-in first-out), not at interpreter teardown after every handler."""
    import subprocess
    import sys
    code = ("import atexit\n"
            "atexit.register(lambda: print('first-registered', flush=True))\n"
            "import cutrans._plan as p\n"
            "class Sentinel:\n"
            "    def __del__(self):\n"
            "        print('freed', flush=True)\n"
            "p._PLAN_CACHE[('cuda', 0, b'', b'')] = Sentinel()\n"
            "atexit.register(lambda: print('atexit', flush=True))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["atexit", "freed", "first-registered"]
