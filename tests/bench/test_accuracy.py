"""The accuracy check: the slice, the float64 reference, the errors and the rule."""
import math

import numpy as np
import pytest

from cutrans.bench import accuracy
from cutrans.bench.methods import valid_mask
from cutrans.bench.workloads import custom_workload, make_inputs


def test_slice_is_the_first_samples_and_scales_down_to_the_size():
    x = make_inputs(custom_workload(6, 40, 10, 16, 8), 0)
    xs = accuracy.check_slice(x, 3, 1 << 30)
    assert xs.shape[0] == 3
    np.testing.assert_array_equal(xs.enc_lengths, x.enc_lengths[:3])
    np.testing.assert_array_equal(xs.target_lengths, x.target_lengths[:3])
    T, U = xs.enc_lengths.max(), xs.target_lengths.max()
    np.testing.assert_array_equal(xs.enc, x.enc[:3, :T])
    np.testing.assert_array_equal(xs.pred, x.pred[:3, :U + 1])
    assert xs.weight is x.weight and xs.enc.flags.c_contiguous
    assert accuracy.slice_info(xs, x)["lengths_scaled"] is False
    small = accuracy.check_slice(x, 3, 2000)
    rows = int((small.enc_lengths.astype(int) * (small.target_lengths + 1)).sum())
    assert rows * 16 <= 2000 and (small.enc_lengths <= x.enc_lengths[:3]).all()
    assert accuracy.slice_info(small, x)["lengths_scaled"] is True
    assert (small.enc_lengths >= 1).all() and (small.target_lengths >= 0).all()
    tiny = accuracy.check_slice(x, 2, 1)  # cannot fit: one frame, no label
    assert tiny.enc_lengths.tolist() == [1, 1] and tiny.target_lengths.tolist() == [0, 0]
    assert accuracy.check_slice(x, 0) is None
    assert accuracy.check_slice(x, 99).shape[0] == 6


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rounded_inputs_are_exact_in_the_half_dtype(dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 NumPy arrays need ml_dtypes")
    x = make_inputs(custom_workload(2, 5, 2, 6, 4), 0)
    r = accuracy.round_inputs(x, dtype)
    dt = accuracy.np_dtype(dtype)
    for a in (r.enc, r.pred, r.weight, r.bias):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a.astype(dt).astype(np.float32), a)
    assert accuracy.round_inputs(x, "float32") is x


def test_reference_matches_torch_float64_autograd():
    torch = pytest.importorskip("torch")
    from cutrans.bench.baseline import joint_logits_torch, loss_on_logits

    x = make_inputs(custom_workload(3, 8, 3, 7, 5), 1)
    xs = accuracy.check_slice(x, 3, 1 << 30)
    ref = accuracy.reference(xs, "float32")
    params = [torch.tensor(a, dtype=torch.float64, requires_grad=True)
              for a in (xs.enc, xs.pred, xs.weight, xs.bias)]
    ints = [torch.tensor(a) for a in (xs.targets, xs.enc_lengths, xs.target_lengths)]
    logits = joint_logits_torch(*params)
    logits.retain_grad()
    loss = loss_on_logits(logits, *ints, use_torchaudio=False)
    loss.backward()
    np.testing.assert_allclose(float(ref["loss"]), loss.item(), rtol=1e-12)
    for name, p in zip(accuracy.JOINT_GRADS, params):
        np.testing.assert_allclose(ref[name], p.grad.numpy(), rtol=1e-9, atol=1e-13)
    mask = valid_mask(xs)
    np.testing.assert_allclose(ref["logits"], logits.grad.numpy()[mask], rtol=1e-9, atol=1e-13)
    # the loss-only rows' reference is on their own (float32) input logits
    assert ref["logits_in"].dtype == np.float32
    np.testing.assert_allclose(ref["given_loss"], ref["loss"], rtol=1e-5)
    assert ref["given_logits"].shape == ref["logits"].shape


def test_errors_are_max_relative_and_inf_for_nan():
    ref = {"loss": np.float64(2.0), "enc": np.array([1.0, -4.0]), "pred": np.ones(2),
           "weight": np.ones((2, 2)), "bias": np.ones(2), "logits": np.ones((3, 2)),
           "given_loss": np.float64(4.0), "given_logits": np.full((3, 2), 2.0)}
    got = {"loss": np.array([2.2]), "enc": np.array([1.2, -4.0]), "pred": np.ones(2),
           "weight": np.full((2, 2), np.nan), "bias": np.ones(2)}
    e = accuracy.errors(got, ref, "joint")
    assert e["loss"] == pytest.approx(0.1) and e["enc"] == pytest.approx(0.05)
    assert e["pred"] == 0 and math.isinf(e["weight"]) and "logits" not in e
    e = accuracy.errors({"loss": 3.0, "logits": np.full((3, 2), 2.5)}, ref, "logits")
    assert e == pytest.approx({"loss": 0.25, "logits": 0.25})
    with pytest.raises(ValueError, match="shape"):
        accuracy.errors({"loss": 2.0, "enc": np.ones(3)}, ref, "joint")


def test_floors_scale_with_the_loss_and_the_storage_rounding():
    u32, c = 2.0 ** -24, accuracy.C_LATTICE
    fl, fg = accuracy.floors("float32", 100.0)
    assert fg == pytest.approx(c * u32 * 100) and fl == pytest.approx(16 * u32)
    assert accuracy.floors("float32", 0.01)[1] == pytest.approx(c * u32)  # L >= 1
    assert accuracy.floors("bfloat16", 100.0)[1] == pytest.approx(c * u32 * 100 + 4 * 2.0 ** -9)
    assert accuracy.floors("float16", 100.0)[1] == pytest.approx(c * u32 * 100 + 4 * 2.0 ** -11)
    assert accuracy.floors("float64", 100.0)[1] < 1e-12
    # the measured worst errors (BENCHMARKS.md) pass by the floor alone
    assert 12.2 * 2.0 ** -53 * 740 < accuracy.floors("float64", 740)[1]
    assert 10 * u32 * 765 < accuracy.floors("float32", 765)[1]
    assert 6.2e-3 < accuracy.floors("bfloat16", 740)[1]
    assert 8.1e-4 < accuracy.floors("float16", 740)[1]


def test_rule_k_times_the_baseline_or_the_floor():
    L = 100.0
    floor_l, floor_g = accuracy.floors("float32", L)
    base = {"loss": floor_l / 10, "enc": 2 * floor_g}
    j = accuracy.judge({"loss": floor_l, "enc": 4 * 2 * floor_g}, base, "float32", L)
    assert j["agrees"] and j["vs_baseline"]["enc"] == pytest.approx(4)
    assert j["allowed"] == pytest.approx({"loss": floor_l, "enc": 8 * floor_g})
    assert not accuracy.judge({"enc": 8.1 * floor_g}, base, "float32", L)["agrees"]
    j = accuracy.judge({"pred": floor_g}, base, "float32", L)  # no baseline error: the floor
    assert j["agrees"] and j["vs_baseline"]["pred"] is None
    assert not accuracy.judge({"pred": 1.01 * floor_g}, base, "float32", L)["agrees"]
    # a broken baseline loosens the rule only up to K x CAP_FACTOR x floor
    j = accuracy.judge({"enc": 0.5}, {"enc": 1.0}, "float32", L)
    assert j["allowed"]["enc"] == pytest.approx(accuracy.K * accuracy.CAP_FACTOR * floor_g)
    assert not j["agrees"]
    assert not accuracy.judge({"enc": math.inf}, base, "float32", L)["agrees"]
    # a longer slice (larger loss) allows proportionally more
    assert accuracy.judge({"enc": 2 * floor_g}, {}, "float32", 2 * L)["agrees"]


def test_every_baseline_agrees_with_itself_unless_grossly_wrong():
    for dtype in accuracy.UNIT:
        fl, fg = accuracy.floors(dtype, 50.0)
        for scale in (0.1, 1.0, 8.0, 32.0):  # up to K x CAP_FACTOR
            err = {"loss": scale * fl, "enc": scale * fg}
            assert accuracy.judge(err, accuracy.baseline_errors([err]), dtype, 50.0)["agrees"]
        err = {"enc": 33 * fg}
        assert not accuracy.judge(err, accuracy.baseline_errors([err]), dtype, 50.0)["agrees"]


def test_baseline_errors_take_the_largest():
    b = accuracy.baseline_errors([{"loss": 1.0, "enc": 2.0}, {"loss": 3.0, "logits": 1.0}])
    assert b == {"loss": 3.0, "enc": 2.0, "logits": 1.0}
