"""The NumPy backend's scatter-add of the joint backward (``_scatter_add_rows``): the same
sums as ``np.add.at`` for any index pattern (the end-to-end gradients are checked in
test_fused.py and, against the kernels, in tests/kernels)."""
import numpy as np
import pytest

from cutrans.backends.numpy_backend import _scatter_add_rows


def index_patterns(rng, n, k):
    yield "sorted runs (frames)", np.sort(rng.integers(0, k, n))
    yield "cycling (label slots)", np.arange(n) % min(k, 5)
    yield "random, repeated", rng.integers(0, k, n)
    yield "one index", np.full(n, k - 1)
    yield "all distinct, reversed", np.arange(n)[::-1] % k
    yield "one row", rng.integers(0, k, 1)
    yield "empty", np.zeros(0, np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_add_rows_equals_add_at(dtype):
    rng = np.random.default_rng(0)
    n, k, H = 37, 40, 3
    for name, idx in index_patterns(rng, n, k):
        # integer values: every summation order gives the same bits
        rows = rng.integers(-50, 50, (idx.size, H)).astype(dtype)
        start = rng.integers(-50, 50, (k, H)).astype(dtype)
        want, got = start.copy(), start.copy()
        np.add.at(want, idx, rows)
        _scatter_add_rows(got, idx, rows)
        np.testing.assert_array_equal(got, want, err_msg=name)
        # general values: equal up to the summation order
        rows = rng.standard_normal((idx.size, H)).astype(dtype)
        want, got = start.copy(), start.copy()
        np.add.at(want, idx, rows)
        _scatter_add_rows(got, idx, rows)
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-13,
                                   atol=1e-5 if dtype == np.float32 else 1e-13, err_msg=name)


def test_scatter_add_rows_non_finite_stays_in_its_row():
    idx = np.array([3, 1, 3, 0, 1])
    rows = np.ones((5, 2))
    rows[2, 0] = np.nan
    rows[1, 1] = np.inf
    want, got = np.zeros((4, 2)), np.zeros((4, 2))
    np.add.at(want, idx, rows)
    _scatter_add_rows(got, idx, rows)
    np.testing.assert_array_equal(got, want)  # NaN at [3, 0], inf at [1, 1] only
