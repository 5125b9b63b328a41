"""The tolerance helper itself: every table entry rejects an all-zero result and a result
off by more than the tolerance, and accepts the reference."""
import re

import numpy as np
import pytest

import tolerances as tl

ENTRIES = [(t, d, q) for t, table in tl.TABLES.items() for d, e in table.items() for q in e]


@pytest.mark.parametrize("table,dtype,quantity", ENTRIES)
def test_entry_rejects_zero_and_accepts_reference(table, dtype, quantity, monkeypatch):
    monkeypatch.setattr(tl, "_REPORT_PATH", None)  # assert, even in measurement mode
    ref = np.random.default_rng(0).standard_normal((3, 4))
    tol = tl.tolerance(table, dtype, quantity)
    tl.assert_close(ref, ref, table, dtype, quantity)
    tl.assert_close(ref * (1 + 0.5 * tol), ref, table, dtype, quantity)
    with pytest.raises(AssertionError, match=re.escape("max|got - ref| / max|ref| = 1 >")):
        tl.assert_close(np.zeros_like(ref), ref, table, dtype, quantity)
    bad = ref.copy()
    bad[1, 2] += 2 * tol * np.abs(ref).max()
    with pytest.raises(AssertionError, match=rf"\({table}, {dtype}\)"):
        tl.assert_close(bad, ref, table, dtype, quantity)


def test_scaled_error_floor_and_nonfinite(monkeypatch):
    monkeypatch.setattr(tl, "_REPORT_PATH", None)
    assert tl.scaled_error([1.0, 2.0], [1.0, 4.0]) == (0.5, 4.0)
    assert tl.scaled_error([1.0, 2.0], [1.0, 4.0], floor=10.0) == (0.2, 10.0)
    assert tl.scaled_error([-np.inf, 1.0], [-np.inf, 1.0]) == (0.0, 1.0)
    with pytest.raises(AssertionError, match="non-finite entries differ"):
        tl.scaled_error([np.nan, 1.0], [0.0, 1.0])
    with pytest.raises(AssertionError, match="the reference is all zero"):
        tl.assert_close(np.zeros(3), np.zeros(3), "logits", "float32", "grad")


def test_floor_is_that_of_the_compute_precision():
    """16-bit entries computed in float32 without a 16-bit rounding have float32's floor;
    every other entry its dtype's (the tables are checked against it at import)."""
    floor = tl.tolerance_floor
    assert floor("logits", "bfloat16", "loss") == tl.FLOOR["float32"]
    assert floor("fuzz", "float16", "loss") == tl.FLOOR["float32"]
    assert floor("logits", "bfloat16", "loss_rounded") == tl.FLOOR["bfloat16"]
    assert floor("fused", "float16", "loss") == tl.FLOOR["float16"]
    assert floor("logits", "float64", "loss") == tl.FLOOR["float64"]
