"""The row plan: packing offsets, chunks and sample groups."""
import numpy as np
import pytest

from cutrans._plan import make_plan, rows_per_chunk


def test_offsets_are_the_exclusive_cumsum_of_lattice_sizes():
    plan = make_plan(np.array([3, 1, 4]), np.array([2, 0, 1]))
    assert plan.offsets.tolist() == [0, 9, 10, 18] and plan.rows == 18


@pytest.mark.parametrize("n", [1, 4, 9, 10, 100])
@pytest.mark.parametrize("sample_wise", [False, True])
def test_chunks_cover_all_rows_once(n, sample_wise):
    plan = make_plan(np.array([3, 1, 4]), np.array([2, 0, 1]))
    chunks = plan.chunks(n, sample_wise)
    covered = np.concatenate([np.arange(r0, r0 + k) for r0, k in chunks])
    assert covered.tolist() == list(range(18)) and max(k for _, k in chunks) <= n
    if sample_wise:  # no chunk crosses a sample boundary
        for r0, k in chunks:
            b = np.searchsorted(plan.offsets, r0, side="right") - 1
            assert r0 + k <= plan.offsets[b + 1]


@pytest.mark.parametrize("max_rows,want", [(None, [(0, 3)]), (100, [(0, 3)]),
                                           (10, [(0, 2), (2, 3)]), (8, [(0, 1), (1, 2), (2, 3)]),
                                           (1, [(0, 1), (1, 2), (2, 3)])])
def test_sample_groups(max_rows, want):
    plan = make_plan(np.array([3, 1, 4]), np.array([2, 0, 1]))  # 9, 1, 8 rows
    assert plan.sample_groups(max_rows) == want


def test_rows_per_chunk_budget():
    assert rows_per_chunk(1000, 10, 100, 1 << 30) == 90
    assert rows_per_chunk(1000, 10, 100, 5) == 5
    with pytest.raises(ValueError, match="max_workspace_bytes=100 is too small"):
        rows_per_chunk(100, 10, 95, 5)
