"""rnnt_loss (NumPy backend) against independent oracles. Only the warprnnt-numba tests need
torch and warprnnt-numba (skipped one by one without them)."""
import numpy as np
import pytest

import cutrans
from np_reference import logits_loss_grad
from oracles import brute_force_loss
from tolerances import assert_close


def random_case(rng, B, T, U, V, blank=0, dtype=np.float64):
    logits = rng.standard_normal((B, T, U + 1, V)).astype(dtype)
    labels = [k for k in range(V) if k != blank]
    targets = rng.choice(labels, size=(B, U)).astype(np.int32)
    t_len = rng.integers(1, T + 1, size=B).astype(np.int32)
    u_len = rng.integers(0, U + 1, size=B).astype(np.int32)
    t_len[0], u_len[0] = T, U  # the padded sizes are used by one sample
    return logits, targets, t_len, u_len


@pytest.mark.parametrize("seed", range(6))
def test_loss_equals_sum_over_all_paths(seed):
    rng = np.random.default_rng(seed)
    T, U, V = int(rng.integers(1, 5)), int(rng.integers(0, 4)), int(rng.integers(2, 6))
    blank = int(rng.integers(0, V))
    logits, targets, t_len, u_len = random_case(rng, 3, T, U, V, blank)
    got = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none")
    want = [brute_force_loss(logits[b], targets[b], t_len[b], u_len[b], blank) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_hand_checked_two_frames_one_label():
    # T=2, U=1, V=2, blank 0, uniform logits: each of the 2 paths has prob (1/2)^3
    logits = np.zeros((1, 2, 2, 2))
    got = cutrans.rnnt_loss(logits, np.array([[1]]), np.array([2]), np.array([1]), reduction="sum")
    np.testing.assert_allclose(got, -np.log(2 * 0.5 ** 3), rtol=1e-14)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reductions(reduction):
    rng = np.random.default_rng(1)
    logits, targets, t_len, u_len = random_case(rng, 4, 5, 3, 6)
    per = cutrans.rnnt_loss(logits, targets, t_len, u_len, reduction="none")
    got = cutrans.rnnt_loss(logits, targets, t_len, u_len, reduction=reduction)
    want = {"none": per, "mean": per.mean(), "sum": per.sum()}[reduction]
    np.testing.assert_allclose(got, want, rtol=1e-13)


# ---------------------------------------------------------------- warprnnt-numba
def warp_loss_and_grad(logits, targets, t_len, u_len, blank, fastemit, clamp):
    torch = pytest.importorskip("torch")
    warp = pytest.importorskip("warprnnt_numba.rnnt_loss.rnnt_pytorch")
    x = torch.tensor(logits.astype(np.float64) if logits.dtype != np.float32 else logits,
                     requires_grad=True)
    loss = warp.rnnt_loss(x, torch.tensor(targets, dtype=torch.int32),
                          torch.tensor(t_len, dtype=torch.int32),
                          torch.tensor(u_len, dtype=torch.int32), blank=blank, reduction="sum",
                          fastemit_lambda=fastemit, clamp=clamp or 0.0)
    loss.backward()
    return loss.item(), x.grad.numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fastemit,clamp", [(0.0, None), (0.01, None), (0.5, None), (0.0, 0.05)])
@pytest.mark.parametrize("seed", range(3))
def test_matches_warprnnt_numba(dtype, fastemit, clamp, seed):
    rng = np.random.default_rng(100 + seed)
    B, T, U, V = 3, int(rng.integers(2, 12)), int(rng.integers(1, 7)), int(rng.integers(3, 20))
    blank = int(rng.integers(0, V))
    logits, targets, t_len, u_len = random_case(rng, B, T, U, V, blank, np.dtype(dtype))
    loss, grad = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="sum",
                                   fastemit_lambda=fastemit, clamp=clamp, return_grad=True)
    w_loss, w_grad = warp_loss_and_grad(logits, targets, t_len, u_len, blank, fastemit, clamp)
    assert_close(loss, w_loss, "warprnnt", dtype, "loss")
    # warprnnt-numba leaves padded positions undefined: compare the valid lattice only
    for b in range(B):
        sl = (b, slice(0, t_len[b]), slice(0, u_len[b] + 1))
        assert_close(grad[sl], w_grad[sl], "warprnnt", dtype, "grad", f"grad of sample {b}")


@pytest.mark.parametrize("fastemit,clamp", [(0.0, None), (0.01, None), (0.5, None), (0.0, 0.05),
                                            (0.2, 0.02)])
@pytest.mark.parametrize("seed", range(3))
def test_matches_numpy_reference(fastemit, clamp, seed):
    """The torch-free oracle (np_reference.py): float64 alpha/beta, FastEmit and clamp."""
    rng = np.random.default_rng(100 + seed)
    B, T, U, V = 3, int(rng.integers(2, 12)), int(rng.integers(1, 7)), int(rng.integers(3, 20))
    blank = int(rng.integers(0, V))
    logits, targets, t_len, u_len = random_case(rng, B, T, U, V, blank)
    up = rng.standard_normal(B)
    losses, ctx = cutrans.rnnt_loss_forward(logits, targets, t_len, u_len, blank=blank,
                                            fastemit_lambda=fastemit, clamp=clamp)
    grad = cutrans.rnnt_loss_backward(ctx, up)
    want, want_g = logits_loss_grad(logits, targets, t_len, u_len, blank,
                                    fastemit_lambda=fastemit, clamp=clamp or 0.0, upstream=up)
    assert_close(losses, want, "logits", "float64", "loss")
    assert_close(grad, want_g, "logits", "float64", "grad")


def test_gradient_zero_on_padding_and_rows_sum_to_zero():
    rng = np.random.default_rng(7)
    logits, targets, t_len, u_len = random_case(rng, 4, 6, 4, 9)
    _, grad = cutrans.rnnt_loss(logits, targets, t_len, u_len, return_grad=True)
    for b in range(4):
        mask = np.zeros(grad.shape[1:3], bool)
        mask[: t_len[b], : u_len[b] + 1] = True
        assert np.all(grad[b][~mask] == 0)
        np.testing.assert_allclose(grad[b][mask].sum(-1), 0, atol=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_directional_derivative_with_random_upstream(seed):
    rng = np.random.default_rng(200 + seed)
    logits, targets, t_len, u_len = random_case(rng, 3, 5, 3, 7)
    up = rng.standard_normal(3)
    losses, ctx = cutrans.rnnt_loss_forward(logits, targets, t_len, u_len)
    grad = cutrans.rnnt_loss_backward(ctx, up)
    d = rng.standard_normal(logits.shape)
    eps = 1e-6

    def f(x):
        return float(up @ cutrans.rnnt_loss(x, targets, t_len, u_len, reduction="none"))

    fd = (f(logits + eps * d) - f(logits - eps * d)) / (2 * eps)
    np.testing.assert_allclose((grad * d).sum(), fd, rtol=1e-7, atol=1e-8)


def test_packed_layout_equals_padded():
    rng = np.random.default_rng(3)
    logits, targets, t_len, u_len = random_case(rng, 3, 5, 4, 6)
    packed = np.concatenate([logits[b, : t_len[b], : u_len[b] + 1].reshape(-1, 6)
                             for b in range(3)])
    l1, g1 = cutrans.rnnt_loss(logits, targets, t_len, u_len, return_grad=True)
    l2, g2 = cutrans.rnnt_loss(packed, targets, t_len, u_len, layout="packed", return_grad=True)
    np.testing.assert_allclose(l1, l2, rtol=1e-14)
    g1p = np.concatenate([g1[b, : t_len[b], : u_len[b] + 1].reshape(-1, 6) for b in range(3)])
    np.testing.assert_allclose(g1p, g2, rtol=1e-12, atol=1e-15)


def test_result_independent_of_padding_values_and_sizes():
    rng = np.random.default_rng(4)
    logits, targets, t_len, u_len = random_case(rng, 3, 5, 3, 6)
    big = rng.standard_normal((3, 9, 6, 6)) * 50  # larger padded sizes, wild padding
    big[:, :5, :4] = logits
    tg = rng.integers(1, 6, size=(3, 5)).astype(np.int32)
    tg[:, :3] = targets
    l1, g1 = cutrans.rnnt_loss(logits, targets, t_len, u_len, return_grad=True)
    l2, g2 = cutrans.rnnt_loss(big, tg, t_len, u_len, return_grad=True)
    np.testing.assert_allclose(l1, l2, rtol=1e-14)
    np.testing.assert_allclose(g2[:, :5, :4], g1, rtol=1e-12, atol=1e-15)
    assert np.all(g2[:, 5:] == 0) and np.all(g2[:, :, 4:] == 0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes_against_float64(dtype):
    """Each dtype against a float64 run on the same stored values (tolerances.LOGITS):
    float32 compute, the gradient rounded once to the input dtype."""
    if dtype == "bfloat16":
        npdt = pytest.importorskip("ml_dtypes").bfloat16
    else:
        npdt = np.dtype(dtype)
    rng = np.random.default_rng(5)
    logits, targets, t_len, u_len = random_case(rng, 3, 6, 3, 8)
    low = logits.astype(npdt)
    ref_l, ref_g = logits_loss_grad(low.astype(np.float64), targets, t_len, u_len, 0,
                                    upstream=np.full(3, 1 / 3))
    loss, grad = cutrans.rnnt_loss(low, targets, t_len, u_len, return_grad=True)
    assert loss.dtype == (np.float64 if dtype == "float64" else np.float32)
    assert grad.dtype == low.dtype
    assert_close(loss, ref_l.mean(), "logits", dtype, "loss")
    assert_close(grad, ref_g, "logits", dtype, "grad")
