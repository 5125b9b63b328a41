"""The ledger's validation gate: the replay of commit 5684109 reproduces its H100 profile."""
import numpy as np
import pytest

from cutrans._plan import make_plan
from cutrans.ledger import model, replay


def test_profiled_lengths_have_the_profiled_aggregates():
    t, u = replay.profiled_lengths()
    plan = make_plan(t, u)
    assert (plan.batch, plan.rows, int(t.max()), int(u.max())) == (30, 824_755, 451, 122)
    assert plan.batch * 451 * 123 == 1_664_190  # GPU-FINDINGS' padded rows


def test_replay_matches_the_profiled_call_counts():
    """10 chunks at 512 MiB: 40 GEMMs, 40 cupy_add, 10 cupy_sum (the profile's counts)."""
    launches = replay.replay_profiled()
    count = lambda name: sum(r.name == name for r in launches)  # noqa: E731
    assert sum(r.kind == "gemm" for r in launches) == 40
    assert count("cupy_add") == 40 and count("cupy_sum") == 10
    assert count("row_stats") == count("row_grad") == 10
    assert count("joint_forward") == 20 and count("lattice") == 1
    rows = sum(r.grid for r in launches if r.name == "row_stats")
    assert rows == 824_755


def test_gate_every_class_and_total_within_2x():
    rows = replay.validation_table()
    for r in rows:
        if r["ratio"] is not None:
            assert 0.5 <= r["ratio"] <= 2.0, r
    assert {r["class"] for r in rows} >= set(replay.PROFILE_5684109) | {"total"}
    assert replay.gate_passes(rows)


def test_fitted_constants_are_the_fit():
    """T_WAVE and T_STEP are the optimum of ``fit_constants`` (within 5%): the two
    constants fitted to the very profile the gate checks."""
    t_wave, t_step = replay.fit_constants()
    assert model.T_WAVE == pytest.approx(t_wave, rel=0.05)
    assert model.T_STEP == pytest.approx(t_step, rel=0.05)


def test_measured_constants():
    """The constants read from GPU-FINDINGS: 1.65 GB in 0.63 ms, in 19.5 ms; GEMM rates."""
    assert model.BW == pytest.approx(2.62e12, rel=0.01)
    assert model.COLUMN_SUM_RATE == pytest.approx(8.46e10, rel=0.01)
    # the modelled fp32 and bf16 GEMM roofs of the libri shape (unpadded, as measured then)
    # vs the measured 26 / 5.7 ms
    R = 824_755
    assert model.gemm_roof(R, 512, 500, "float32", padded=False) * 1e3 == pytest.approx(
        26, rel=0.1)
    assert model.gemm_roof(R, 512, 500, "bfloat16", padded=False) * 1e3 == pytest.approx(
        5.7, rel=0.1)
    assert np.isfinite(model.gemm_rate("float64", "float64", False))
    # run D (BENCHMARKS.md): the headline's aligned bf16 roof, 1.06 s; padding changes
    # nothing there (H=512, V=1024), and fp32 does not depend on alignment
    assert model.gemm_roof(205_824_000, 512, 1024, "bfloat16") == pytest.approx(1.06, rel=0.01)
    assert model.gemm_roof(205_824_000, 512, 1024, "bfloat16", padded=False) == \
        model.gemm_roof(205_824_000, 512, 1024, "bfloat16")
    assert model.gemm_rate("float32", "float32", False, aligned=True) == \
        model.gemm_rate("float32", "float32", False)


def test_out_of_sample_headline_within_2x():
    """Nothing was fitted on the headline: 5684109's measured 29.9 s (fp32) within 2x."""
    hc = replay.headline_check()
    assert 0.5 <= hc["ratio"] <= 2.0, hc
