"""transducer_loss (NumPy backend) against a naive PyTorch autograd batched computation."""
import numpy as np
import pytest

import cutrans
from cutrans._fused import min_workspace_bytes
from tolerances import TOL

torch = pytest.importorskip("torch")
from oracles import torch_fused_losses  # noqa: E402


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


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_fused_low_precision(dtype):
    npdt = pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(11)
    case = fused_case(rng, 3, 6, 4, 9, 8)
    low = [x.astype(npdt) for x in case[:4]]
    ref_l, ref_g = torch_reference(*[x.astype(np.float64) for x in low], *case[4:], "tanh", 0,
                                   np.ones(3))
    out = cutrans.transducer_loss(*low, *case[4:], reduction="sum")
    atol, rtol = TOL[dtype]
    # 16-bit logits (the precision policy) give ~3e-5 relative loss error (measured)
    np.testing.assert_allclose(out.loss, ref_l.sum(), rtol=2e-4 if dtype != "float32" else 1e-5)
    for g, r, x in zip(out.grads, ref_g, low):
        assert g.dtype == x.dtype
        np.testing.assert_allclose(g.astype(np.float64), r, atol=atol * 10, rtol=rtol)


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


@pytest.mark.parametrize("sample_wise", [False, True])
def test_chunked_equals_unchunked(sample_wise):
    rng = np.random.default_rng(8)
    case = fused_case(rng, 5, 6, 4, 11, 7)
    B, H, V = 5, 7, 11
    rows = int(sum(case[5] * (case[6] + 1)))
    whole = cutrans.transducer_loss(*case, max_workspace_bytes=1 << 30)
    one_row = min_workspace_bytes(*case[:3])  # the smallest legal budget: one row per chunk
    per_row = 8 * (2 * H + V)
    for budget in (one_row, one_row + 3 * per_row, one_row + rows // 2 * per_row):
        out = cutrans.transducer_loss(*case, max_workspace_bytes=budget, sample_wise=sample_wise)
        np.testing.assert_allclose(out.loss, whole.loss, rtol=1e-14)
        for g, r in zip(out.grads, whole.grads):
            np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-14)
    assert B == case[0].shape[0]


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
