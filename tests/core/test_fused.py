"""transducer_loss (NumPy backend) against a naive PyTorch autograd batched computation and
the float64 NumPy reference (tests/np_reference.py). Only the torch-oracle tests need torch
(skipped one by one without it)."""
import numpy as np
import pytest

import cutrans
from cutrans._fused import workspace_bytes
from cutrans.backends import NumpyBackend
from np_reference import fused_loss_grads
from tolerances import assert_close

GRADS = ("enc", "pred", "weight", "bias")


def fused_case(rng, B, T, U, V, H, blank=0, dtype=np.float64):
    enc = rng.standard_normal((B, T, H)).astype(dtype)
    pred = rng.standard_normal((B, U + 1, H)).astype(dtype)
    weight = (rng.standard_normal((V, H)) / np.sqrt(H)).astype(dtype)
    bias = rng.standard_normal(V).astype(dtype) * 0.1
    labels = [k for k in range(V) if k != blank]
    targets = rng.choice(labels, size=(B, U)).astype(np.int64)
    t_len = rng.integers(1, T + 1, size=B).astype(np.int64)
    u_len = rng.integers(0, U + 1, size=B).astype(np.int64)
    t_len[0], u_len[0] = T, U
    return enc, pred, weight, bias, targets, t_len, u_len


def torch_reference(enc, pred, weight, bias, targets, t_len, u_len, activation, blank, up):
    torch = pytest.importorskip("torch")
    from oracles import torch_fused_losses
    ts = [torch.tensor(x, dtype=torch.float64, requires_grad=True)
          for x in (enc, pred, weight, bias)]
    losses = torch_fused_losses(*ts, targets, t_len, u_len, activation, blank)
    (losses * torch.tensor(up)).sum().backward()
    return losses.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("seed", range(3))
def test_fused_matches_torch_autograd(activation, seed):
    rng = np.random.default_rng(seed)
    B, T, U, V, H = 4, int(rng.integers(1, 7)), int(rng.integers(0, 5)), 7, 5
    blank = int(rng.integers(0, V))
    case = fused_case(rng, B, T, U, V, H, blank)
    up = rng.standard_normal(B)
    losses, ctx = cutrans.transducer_forward(*case, activation=activation, blank=blank,
                                             max_workspace_bytes=4096)
    grads = cutrans.transducer_backward(ctx, up)
    ref_l, ref_g = torch_reference(*case, activation, blank, up)
    np.testing.assert_allclose(losses, ref_l, rtol=1e-12)
    for name, g, r in zip(("enc", "pred", "weight", "bias"), grads, ref_g):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12, err_msg=name)


def np_dtype(dtype):
    if dtype == "bfloat16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return np.dtype(dtype)


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("fastemit,clamp", [(0.0, None), (0.3, 0.05)])
def test_fused_matches_numpy_reference(activation, fastemit, clamp):
    """The torch-free oracle: float64 alpha/beta reference + chain rule (np_reference.py)."""
    rng = np.random.default_rng(31)
    B, T, U, V, H = 4, 5, 3, 7, 5
    blank = 3
    case = fused_case(rng, B, T, U, V, H, blank)
    up = rng.standard_normal(B)
    losses, ctx = cutrans.transducer_forward(*case, activation=activation, blank=blank,
                                             fastemit_lambda=fastemit, clamp=clamp,
                                             max_workspace_bytes=4096)
    grads = cutrans.transducer_backward(ctx, up)
    ref_l, ref_g = fused_loss_grads(*case, blank, activation=activation,
                                    fastemit_lambda=fastemit, clamp=clamp or 0.0, upstream=up)
    assert_close(losses, ref_l, "fused", "float64", "loss")
    for name, g, r in zip(GRADS, grads, ref_g):
        assert_close(g, r, "fused", "float64", name, f"d_{name}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_fused_dtypes_against_float64(dtype):
    """Each dtype against a float64 run on the same stored values (tolerances.FUSED)."""
    npdt = np_dtype(dtype)
    rng = np.random.default_rng(11)
    case = fused_case(rng, 3, 6, 4, 9, 8)
    low = [x.astype(npdt) for x in case[:4]]
    ref_l, ref_g = fused_loss_grads(*[x.astype(np.float64) for x in low], *case[4:], 0)
    out = cutrans.transducer_loss(*low, *case[4:], reduction="sum")
    assert np.asarray(out.loss).dtype == (np.float64 if dtype == "float64" else np.float32)
    assert_close(out.loss, ref_l.sum(), "fused", dtype, "loss")
    for name, g, r, x in zip(GRADS, out.grads, ref_g, low):
        assert g.dtype == x.dtype and g.shape == x.shape, name
        assert_close(g, r, "fused", dtype, name, f"d_{name}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_fused_low_precision_matches_torch_oracle(dtype):
    """The same check against the independent torch autograd oracle (needs torch)."""
    npdt = np_dtype(dtype)
    rng = np.random.default_rng(11)
    case = fused_case(rng, 3, 6, 4, 9, 8)
    low = [x.astype(npdt) for x in case[:4]]
    ref_l, ref_g = torch_reference(*[x.astype(np.float64) for x in low], *case[4:], "tanh", 0,
                                   np.ones(3))
    out = cutrans.transducer_loss(*low, *case[4:], reduction="sum")
    assert_close(out.loss, ref_l.sum(), "fused", dtype, "loss")
    for name, g, r in zip(GRADS, out.grads, ref_g):
        assert_close(g, r, "fused", dtype, name, f"d_{name}")


def test_directional_derivative_fused_float64():
    rng = np.random.default_rng(21)
    case = fused_case(rng, 3, 5, 3, 6, 4)
    up = rng.standard_normal(3)
    _, ctx = cutrans.transducer_forward(*case, max_workspace_bytes=2000)
    grads = cutrans.transducer_backward(ctx, up)
    dirs = [rng.standard_normal(x.shape) for x in case[:4]]
    eps = 1e-6

    def f(s):
        xs = [x + s * d for x, d in zip(case[:4], dirs)]
        losses, _ = cutrans.transducer_forward(*xs, *case[4:], need_grad=False)
        return float(up @ losses)

    fd = (f(eps) - f(-eps)) / (2 * eps)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
    np.testing.assert_allclose(analytic, fd, rtol=1e-7)


def test_fused_equals_logits_op_on_joint_logits():
    rng = np.random.default_rng(5)
    enc, pred, w, b, targets, t_len, u_len = fused_case(rng, 3, 4, 3, 6, 5)
    logits = np.tanh(enc[:, :, None] + pred[:, None]) @ w.T + b
    l_ref, g_ref = cutrans.rnnt_loss(logits, targets, t_len, u_len, return_grad=True,
                                     fastemit_lambda=0.2, clamp=0.01)
    out = cutrans.transducer_loss(enc, pred, w, b, targets, t_len, u_len, fastemit_lambda=0.2,
                                  clamp=0.01)
    np.testing.assert_allclose(out.loss, l_ref, rtol=1e-13)
    # the bias gradient is the sum of the logits gradients over all lattice points
    np.testing.assert_allclose(out.grads.bias, g_ref.sum((0, 1, 2)), rtol=1e-10, atol=1e-14)


class ChunkRecorder(NumpyBackend):
    """The NumPy backend, recording the (row0, n_rows) of every joint_forward call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def joint_forward(self, enc, pred, plan, row0, n_rows, activation, h):
        self.calls.append((int(row0), int(n_rows)))
        return super().joint_forward(enc, pred, plan, row0, n_rows, activation, h)


@pytest.mark.parametrize("sample_wise", [False, True])
def test_chunked_equals_unchunked(sample_wise):
    rng = np.random.default_rng(8)
    case = fused_case(rng, 5, 6, 4, 11, 7)
    H, V = 7, 11
    t_len, u_len = case[5], case[6]
    offsets = np.concatenate([[0], np.cumsum(t_len * (u_len + 1))])
    rows = int(offsets[-1])
    whole = cutrans.transducer_loss(*case, max_workspace_bytes=1 << 30)
    for n_max in (1, 4, rows // 2 + 1):  # 1: the smallest legal budget
        rec = ChunkRecorder()
        out = cutrans.transducer_loss(*case, max_workspace_bytes=workspace_bytes(*case[:3], n_max),
                                      sample_wise=sample_wise, backend=rec)
        np.testing.assert_allclose(out.loss, whole.loss, rtol=1e-14)
        for g, r in zip(out.grads, whole.grads):
            np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-14)
        # the chunks (recomputed ones repeat) tile the rows in order, none larger than the
        # budget allows, and (sample_wise) none crosses a sample boundary
        fwd, pos = sorted(set(rec.calls)), 0
        for row0, n in fwd:
            assert row0 == pos and 1 <= n <= n_max, (row0, n, pos, n_max)
            pos += n
        assert pos == rows
        if sample_wise:
            for row0, n in fwd:
                b = np.searchsorted(offsets, row0, side="right") - 1
                assert row0 + n <= offsets[b + 1], (row0, n, offsets)


def test_fused_independent_of_padding():
    rng = np.random.default_rng(9)
    enc, pred, w, b, targets, t_len, u_len = fused_case(rng, 3, 4, 3, 6, 5)
    enc2 = rng.standard_normal((3, 8, 5)) * 30
    enc2[:, :4] = enc
    pred2 = rng.standard_normal((3, 7, 5)) * 30
    pred2[:, :4] = pred
    tg2 = rng.integers(1, 6, size=(3, 6))
    tg2[:, :3] = targets
    a = cutrans.transducer_loss(enc, pred, w, b, targets, t_len, u_len)
    c = cutrans.transducer_loss(enc2, pred2, w, b, tg2, t_len, u_len)
    np.testing.assert_allclose(a.loss, c.loss, rtol=1e-14)
    np.testing.assert_allclose(c.grads.enc[:, :4], a.grads.enc, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(c.grads.pred[:, :4], a.grads.pred, rtol=1e-12, atol=1e-15)
    assert np.all(c.grads.enc[:, 4:] == 0) and np.all(c.grads.pred[:, 4:] == 0)
    np.testing.assert_allclose(c.grads.weight, a.grads.weight, rtol=1e-12)


class GemmRecorder(NumpyBackend):
    """The NumPy backend, recording each GEMM operand's (contiguous extent, leading
    dimension) in elements."""

    def __init__(self):
        super().__init__()
        self.operands = []

    def gemm(self, a, b, out, accumulate=False, tf32=False):
        for x in (a, b, out):
            s0, s1 = (s // x.itemsize for s in x.strides)
            assert 1 in (s0, s1), x.strides
            self.operands.append((x.shape[1], s0) if s1 == 1 else (x.shape[0], s1))
        super().gemm(a, b, out, accumulate, tf32)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("path", ["one pass", "two passes"])
def test_gemms_run_on_widths_of_multiples_of_8(dtype, path):
    """V=13, H=8: every GEMM operand's contiguous extent and leading dimension is a
    multiple of 8 elements (16 bytes in 16-bit storage: what cuBLAS's fast tensor-core
    kernels need; dh's width is H, so that needs H a multiple of 8); the zero padding
    changes no result."""
    rng = np.random.default_rng(12)
    case = fused_case(rng, 3, 5, 4, 13, 8)
    low = [x.astype(dtype) for x in case[:4]]
    budget = workspace_bytes(*low[:3], rows_per_chunk=7)  # several chunks
    rec = GemmRecorder()
    if path == "one pass":
        out = cutrans.transducer_loss(*low, *case[4:], reduction="sum",
                                      max_workspace_bytes=budget, backend=rec)
        loss, grads = out.loss, out.grads
    else:
        losses, ctx = cutrans.transducer_forward(*low, *case[4:], max_workspace_bytes=budget,
                                                 backend=rec)
        loss, grads = losses.sum(), cutrans.transducer_backward(ctx, np.ones(3))
    assert len(rec.operands) >= 3 * 3 * 3  # three operands of three GEMMs, several chunks
    bad = [(e, ld) for e, ld in rec.operands if e % 8 or ld % 8]
    assert not bad, bad
    ref_l, ref_g = fused_loss_grads(*[x.astype(np.float64) for x in low], *case[4:], 0)
    assert_close(loss, ref_l.sum(), "fused", dtype, "loss")
    for name, g, r in zip(GRADS, grads, ref_g):
        assert g.shape == r.shape, name
        assert_close(g, r, "fused", dtype, name, f"d_{name}")


def test_no_grad_forward_matches():
    rng = np.random.default_rng(10)
    case = fused_case(rng, 2, 4, 2, 5, 3)
    out = cutrans.transducer_loss(*case, compute_grad=False)
    assert out.grads is None
    np.testing.assert_allclose(out.loss, cutrans.transducer_loss(*case).loss, rtol=1e-15)


@pytest.mark.parametrize("budget", [1 << 30, 3000])  # one resident chunk / many chunks
def test_backward_twice_on_one_context(budget):
    rng = np.random.default_rng(12)
    case = fused_case(rng, 3, 5, 3, 6, 4)
    _, ctx = cutrans.transducer_forward(*case, max_workspace_bytes=budget)
    first = cutrans.transducer_backward(ctx, np.ones(3))
    second = cutrans.transducer_backward(ctx, 2 * np.ones(3))
    for a, b in zip(first, second):
        np.testing.assert_allclose(2 * a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, False, True),
                                   (False, False, True, False), (False, False, False, False)])
def test_backward_only_needed_gradients(needs):
    rng = np.random.default_rng(13)
    case = fused_case(rng, 3, 5, 3, 6, 4)
    _, ctx = cutrans.transducer_forward(*case, max_workspace_bytes=3000)
    full = cutrans.transducer_backward(ctx, np.ones(3))
    part = cutrans.transducer_backward(ctx, np.ones(3), needs=needs)
    for need, g, f in zip(needs, part, full):
        if need:
            np.testing.assert_array_equal(g, f)
        else:
            assert g is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["number", "numpy scalar", "one-element array"])
@pytest.mark.parametrize("scale", [2.0 ** 16, 1 / 3])
def test_one_pass_upstream_scales_in_float32_rounded_once(dtype, kind, scale):
    """The one-pass backward scales 16-bit gradients in float32 and rounds once: a loss
    scale of 2**16 (``torch.amp.GradScaler``'s; beyond float16's 65504) keeps them finite,
    and an inexact one (1/3, which bfloat16 would round first) gives exactly
    ``round(g * scale)`` of the scale-1 gradients ``g``."""
    sdt = np_dtype(dtype)
    rng = np.random.default_rng(41)
    case = fused_case(rng, 3, 5, 3, 6, 4)
    case = tuple(x.astype(sdt) for x in case[:4]) + case[4:]
    _, ctx = cutrans.transducer_forward(*case, reduction="sum",  # "mean": the next test
                                        max_workspace_bytes=1 << 20)
    up = {"number": scale, "numpy scalar": np.float32(scale),
          "one-element array": np.array([scale], dtype=np.float32)}[kind]
    got = cutrans.transducer_backward(ctx, up)
    unit = cutrans.transducer_backward(ctx, 1.0)
    for name, g, g1 in zip(GRADS, got, unit):
        with np.errstate(over="ignore"):  # a few true products exceed float16
            want = (g1.astype(np.float32) * np.float32(scale)).astype(sdt)
        if name == "enc":  # the case is fit (dW, db, sums over rows, may overflow)
            assert np.isfinite(want.astype(np.float32)).mean() >= 0.5
        assert g.dtype == sdt, name
        np.testing.assert_array_equal(g.astype(np.float32), want.astype(np.float32),
                                      err_msg=name)


def test_one_pass_scale_of_16_bit_gradients_goes_in_pieces(monkeypatch):
    """Pieces of the flattened gradient (a bounded float32 temporary) give the whole's bits."""
    from cutrans import api
    rng = np.random.default_rng(42)
    case = fused_case(rng, 2, 5, 3, 6, 4)
    case = tuple(x.astype(np.float16) for x in case[:4]) + case[4:]
    _, ctx = cutrans.transducer_forward(*case, reduction="sum")
    whole = cutrans.transducer_backward(ctx, 2.0 ** 16)
    monkeypatch.setattr(api, "SCALE_PIECE", 7)  # not a divisor of any gradient's size
    pieces = cutrans.transducer_backward(ctx, 2.0 ** 16)
    for name, a, b in zip(GRADS, whole, pieces):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_float16_mean_gradients_keep_their_bits_under_a_loss_scale():
    """float16 "mean": d_enc/d_pred are kept as gradients of the sum and the 1/B comes with
    the upstream gradient (float32, one rounding), so a large batch's small entries do not
    sink into float16's subnormals before a loss scale can lift them: against float64 they
    are as exact as the two-pass path's, which gets the scaled upstream before it rounds
    (with 1/B applied in the forward: about twice the error here)."""
    rng = np.random.default_rng(43)
    B, scale = 64, 2.0 ** 12
    case = list(fused_case(rng, B, 6, 3, 8, 8))
    case[2] = case[2] * 0.01  # small gradients: d_enc / B below float16's normal range
    c16 = [x.astype(np.float16) for x in case[:4]] + case[4:]
    c64 = [x.astype(np.float64) for x in c16[:4]] + case[4:]
    _, ref = fused_loss_grads(*c64, 0, upstream=np.full(B, scale / B))
    _, ctx = cutrans.transducer_forward(*c16, reduction="mean")
    one = cutrans.transducer_backward(ctx, scale)
    _, ctx2 = cutrans.transducer_forward(*c16, reduction="none")
    two = cutrans.transducer_backward(ctx2, np.full(B, scale / B, np.float32))
    for name, a, b, r in zip(GRADS, one, two, ref):
        def err(g):
            return np.linalg.norm(g.astype(np.float64) - r) / np.linalg.norm(r)
        assert err(a) <= 1.05 * err(b), (name, err(a), err(b))
    r = np.abs(ref[0][ref[0] != 0]) / scale  # the case is fit: the mean loss' d_enc
    assert np.median(r) < 6.1e-5  # mostly below float16's normal range


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_transducer_loss_scales_its_own_gradients_in_place(dtype):
    """``transducer_loss`` applies the owed factors in place (no second gradient-sized array
    at the headline's sizes), with the bits of the out-of-place backward."""
    from cutrans import api
    g = np.random.default_rng(44).standard_normal((3, 50)).astype(dtype)
    want = api._scale(np, g, 1.0, 1 / 3)
    assert want is not g
    got = api._scale(np, g, 1.0, 1 / 3, in_place=True)
    assert got is g
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("needs", [(True, True, False, False), (False, False, True, False),
                                   (False, True, False, True)])
def test_16_bit_mean_with_some_gradients(needs):
    """16-bit "mean" owes 1/B only on d_enc/d_pred, with dW/db or without them (a frozen
    output layer): the needed gradients equal those of the full call."""
    rng = np.random.default_rng(45)
    case = fused_case(rng, 4, 5, 3, 8, 4)
    c16 = tuple(x.astype(np.float16) for x in case[:4]) + case[4:]
    _, full = cutrans.transducer_forward(*c16, reduction="mean")
    _, part = cutrans.transducer_forward(*c16, reduction="mean", needs=needs)
    for need, g, f in zip(needs, cutrans.transducer_backward(part, 8.0, needs=needs),
                          cutrans.transducer_backward(full, 8.0)):
        if need:
            np.testing.assert_array_equal(g, f)
        else:
            assert g is None


def test_16_bit_scale_temporary_is_one_float32_piece(monkeypatch):
    """The float32 temporary of the 16-bit scaling is one piece (SCALE_PIECE elements)."""
    import tracemalloc
    from cutrans import api
    monkeypatch.setattr(api, "SCALE_PIECE", 1 << 18)
    g = np.ones(1 << 20, np.float16)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        api._scale(np, g, 1.0, 1 / 3, in_place=True)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert (1 << 18) * 4 <= peak < (1 << 18) * 4 * 1.5, peak


def test_least_workspace_is_below_every_paths_minimum():
    """check_least_workspace (the adapters' early check) never refuses a budget that a path
    accepts, and is within a few bytes per row of the smallest of them."""
    from cutrans._fused import check_least_workspace
    rng = np.random.default_rng(13)
    case = fused_case(rng, 2, 3, 2, 13, 5, dtype=np.float32)

    def least(accepts):
        lo, hi = 1, workspace_bytes(*case[:3])
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                accepts(mid)
                hi = mid
            except ValueError:
                lo = mid + 1
        return lo
    early = least(lambda b: check_least_workspace(b, *case[:3]))
    paths = [least(lambda b: cutrans.transducer_forward(*case, max_workspace_bytes=b,
                                                        need_grad=False)),
             least(lambda b: cutrans.transducer_forward(*case, max_workspace_bytes=b)),
             least(lambda b: cutrans.transducer_loss(*case, max_workspace_bytes=b))]
    assert early <= min(paths) <= early + 8  # a float of state per row at most
    with pytest.raises(ValueError, match=f"max_workspace_bytes={early - 1} is too small"):
        check_least_workspace(early - 1, *case[:3])
