"""cutrans.interop.torch.rnnt_loss / RNNTLoss against the core and independent oracles."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cutrans  # noqa: E402
from cutrans.interop.torch import RNNTLoss, rnnt_loss  # noqa: E402
from interop_cases import logits_case  # noqa: E402
from oracles import torch_rnnt_losses  # noqa: E402
from tolerances import assert_close  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


def tensors(logits, targets, t_len, u_len, dtype=torch.float64):
    x = torch.tensor(logits, dtype=torch.float64).to(dtype).requires_grad_()
    return x, torch.tensor(targets), torch.tensor(t_len), torch.tensor(u_len)


def close(got, want, dtype_name, quantity, table="logits"):
    assert_close(np.asarray(got, np.float64), np.asarray(want, np.float64), table, dtype_name,
                 quantity)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_core_and_torch_oracle(dtype, reduction):
    logits, targets, t_len, u_len = logits_case(1, V=7, blank=6)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len, DTYPES[dtype])
    loss = rnnt_loss(x, y, tl, ul, reduction=reduction)  # blank=-1 -> 6, as torchaudio
    assert loss.dtype == DTYPES[dtype]  # torchaudio returns the logits' dtype
    assert loss.shape == ((3,) if reduction == "none" else ())
    loss.sum().backward()
    # the core on the same storage values (float64 copy of the rounded inputs)
    xr = x.detach().double().numpy()
    want, want_g = cutrans.rnnt_loss(xr, targets, t_len, u_len, blank=6, reduction=reduction,
                                     return_grad=True)
    # float16/bfloat16: the loss comes back rounded to the logits' dtype, as torchaudio's
    q_loss = "loss_rounded" if dtype in ("float16", "bfloat16") else "loss"
    close(loss.detach().double().numpy(), want, dtype, q_loss)
    close(x.grad.double().numpy(), want_g, dtype, "grad")
    # independent oracle: torch autograd on log_softmax in float64
    xo = torch.tensor(xr, requires_grad=True)
    per = torch_rnnt_losses(xo.log_softmax(-1), targets, t_len, u_len, 6)
    red = {"none": per, "mean": per.mean(), "sum": per.sum()}[reduction]
    red.sum().backward()
    close(loss.detach().double().numpy(), red.detach().numpy(), dtype, q_loss)
    close(x.grad.double().numpy(), xo.grad.numpy(), dtype, "grad")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fastemit,clamp", [(0.0, -1), (0.3, -1), (0.0, 0.05)])
def test_matches_warprnnt_numba(dtype, fastemit, clamp):
    warp = pytest.importorskip("warprnnt_numba.rnnt_loss.rnnt_pytorch")
    logits, targets, t_len, u_len = logits_case(3, B=4, T=6, U=4, V=9, blank=2)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len, DTYPES[dtype])
    # warprnnt-numba (CPU) clamps after the 1/B of "mean", torchaudio (and cutrans) before
    # the upstream scaling: they agree for "sum"
    reduction = "mean" if clamp < 0 else "sum"
    loss = rnnt_loss(x, y, tl, ul, blank=2, clamp=clamp, reduction=reduction,
                     fastemit_lambda=fastemit)
    loss.backward()
    xw = x.detach().clone().requires_grad_()
    wl = warp.rnnt_loss(xw, y, tl, ul, blank=2, reduction=reduction, fastemit_lambda=fastemit,
                        clamp=max(clamp, 0.0))
    wl.backward()
    close(loss.item(), wl.item(), dtype, "loss", "warprnnt")
    for b in range(4):  # warprnnt-numba leaves the padding undefined
        sl = (b, slice(0, t_len[b]), slice(0, u_len[b] + 1))
        close(x.grad[sl].numpy(), xw.grad[sl].numpy(), dtype, "grad", "warprnnt")


def test_fused_log_softmax_false_uses_logits_as_log_probs():
    logits, targets, t_len, u_len = logits_case(4, V=5)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    lp = x.log_softmax(-1)
    a = rnnt_loss(lp, y, tl, ul, blank=0, fused_log_softmax=False, reduction="none")
    b = rnnt_loss(x, y, tl, ul, blank=0, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    # unnormalised input: recursion directly on the given values (torchaudio semantics)
    a = rnnt_loss(x, y, tl, ul, blank=0, fused_log_softmax=False, reduction="none")
    xo = x.detach().clone().requires_grad_()
    want = torch_rnnt_losses(xo, targets, t_len, u_len, 0)
    torch.testing.assert_close(a, want, rtol=1e-12, atol=1e-12)
    g, = torch.autograd.grad(a.sum(), x)
    want.sum().backward()
    torch.testing.assert_close(g, xo.grad, rtol=1e-10, atol=1e-12)


def test_fused_log_softmax_false_clamp_and_half():
    logits, targets, t_len, u_len = logits_case(5, V=5)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    lp = x.log_softmax(-1).detach().requires_grad_()
    rnnt_loss(lp, y, tl, ul, blank=0, clamp=0.1, fused_log_softmax=False).backward()
    assert lp.grad.abs().max() <= 0.1 / 3 + 1e-15  # clamp, then mean's 1/B
    lp16 = lp.detach().half().requires_grad_()
    l16 = rnnt_loss(lp16, y, tl, ul, blank=0, fused_log_softmax=False)
    assert l16.dtype == torch.float16
    l16.backward()
    assert lp16.grad.dtype == torch.float16


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_float64(fused):
    logits, targets, t_len, u_len = logits_case(6, B=2, T=3, U=2, V=4)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, y, tl, ul, blank=0, reduction="none", fused_log_softmax=fused),
        (x,))


def test_non_contiguous_and_sliced_inputs():
    logits, targets, t_len, u_len = logits_case(7, V=6)
    want, want_g = cutrans.rnnt_loss(logits, targets, t_len, u_len, return_grad=True)
    # a (T, B, V, U+1) buffer permuted to (B, T, U+1, V) plus a sliced-off extra class
    big = torch.zeros(5, 3, 8, 4, dtype=torch.float64)
    big[:, :, :6, :] = torch.tensor(logits).permute(1, 0, 3, 2)
    x = big.permute(1, 0, 3, 2)[..., :6].detach().requires_grad_()
    assert not x.is_contiguous()
    y = torch.tensor(targets).t().contiguous().t()  # column-major targets
    loss = rnnt_loss(x, y, torch.tensor(t_len), torch.tensor(u_len), blank=0)
    loss.backward()
    torch.testing.assert_close(loss.item(), float(want), rtol=1e-12, atol=0)
    np.testing.assert_allclose(x.grad.numpy(), want_g, rtol=1e-10, atol=1e-14)


def test_no_grad_paths_and_repeated_backward():
    logits, targets, t_len, u_len = logits_case(8)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    with torch.no_grad():
        l0 = rnnt_loss(x, y, tl, ul, blank=0)
    assert l0.grad_fn is None
    l1 = rnnt_loss(x.detach(), y, tl, ul, blank=0)
    assert l1.grad_fn is None and l1.item() == l0.item()
    loss = rnnt_loss(x, y, tl, ul, blank=0) * 3.0
    loss.backward(retain_graph=True)
    g1 = x.grad.clone()
    loss.backward()  # scaling is out of place: the second backward adds the same gradient
    torch.testing.assert_close(x.grad, 2 * g1)
    _, want_g = cutrans.rnnt_loss(logits, targets, t_len, u_len, return_grad=True)
    np.testing.assert_allclose(g1.numpy(), 3 * want_g, rtol=1e-12, atol=1e-15)


def test_random_upstream_gradient_and_int64_indices():
    logits, targets, t_len, u_len = logits_case(9)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    up = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    per = rnnt_loss(x, y.long(), tl.long(), ul.long(), blank=0, reduction="none")
    g, = torch.autograd.grad(per, x, up)
    losses, ctx = cutrans.rnnt_loss_forward(logits, targets, t_len, u_len)
    np.testing.assert_allclose(g.numpy(), cutrans.rnnt_loss_backward(ctx, up.numpy()),
                               rtol=1e-12, atol=1e-15)


def test_module_matches_function():
    logits, targets, t_len, u_len = logits_case(10, V=6, blank=5)
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    mod = RNNTLoss(reduction="sum", clamp=-1)
    torch.testing.assert_close(mod(x, y, tl, ul), rnnt_loss(x, y, tl, ul, reduction="sum"))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("change,exc,match", [
    ({"blank": 1}, ValueError, r"targets: expected no blank \(1\)"),
    ({"logit_lengths": [6, 1, 1]}, ValueError,
     r"logit_lengths: expected frame counts in \[1, 5\]"),
    ({"target_lengths": [4, 0, 0]}, ValueError,
     r"target_lengths: expected label counts in \[0, 3\]"),
    ({"targets_value": 99}, ValueError, r"targets: expected labels in \[0, 6\)"),
    ({"reduction": "avg"}, ValueError, r"reduction: expected one of"),
    ({"blank": 6}, ValueError, r"blank: expected a label id in \[-6, 6\)"),
    ({"targets_dtype": torch.float32}, TypeError, r"targets: expected dtype int32 or int64"),
    ({"logits": "nope"}, TypeError, r"logits: expected a torch.Tensor"),
    ({"fastemit_lambda": None}, TypeError, r"^fastemit_lambda: expected a real number, got "
                                           r"NoneType$"),
    ({"fastemit_lambda": "0.5"}, TypeError, r"^fastemit_lambda: expected a real number"),
    ({"blank": 0.0}, TypeError, r"^blank: expected an int, got float$"),
])
def test_errors_name_the_argument(fused, change, exc, match):
    logits, targets, t_len, u_len = logits_case(11, V=6)
    targets[0, 0] = 1
    x, y, tl, ul = tensors(logits, targets, t_len, u_len)
    kw = dict(logits=x, targets=y, logit_lengths=tl, target_lengths=ul, blank=0,
              fused_log_softmax=fused)
    for k, val in change.items():
        if k == "targets_value":
            y = y.clone()
            y[0, 0] = val
            kw["targets"] = y
        elif k == "targets_dtype":
            kw["targets"] = y.to(val)
        elif k.endswith("lengths"):
            kw[k] = torch.tensor(val, dtype=torch.int32)
        else:
            kw[k] = val
    with pytest.raises(exc, match=match):
        rnnt_loss(**kw)


def test_logprob_path_validates_before_computing():
    import torch
    from cutrans.interop.torch import rnnt_loss
    lp = torch.log_softmax(torch.randn(2, 4, 3, 5), -1)
    tg = torch.tensor([[1, 2], [3, 1]], dtype=torch.int32)
    tl = torch.tensor([4, 3], dtype=torch.int32)
    ul = torch.tensor([2, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"logits: expected size 5 \(U\+1, from targets' width U\)"):
        rnnt_loss(lp, torch.cat([tg, tg], 1), tl, ul, fused_log_softmax=False)
    with pytest.raises(ValueError, match=r"logits: expected size 1 \(batch size B of targets\)"):
        rnnt_loss(lp, tg[:1], tl, ul, fused_log_softmax=False)  # the core's message
    with pytest.raises(ValueError, match=r"logit_lengths: expected size 2 \(batch size B\)"):
        rnnt_loss(lp, tg, tl[:1], ul, fused_log_softmax=False)
    bad = lp.clone()
    bad[0, 0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"logits: expected log-probabilities without NaN"):
        rnnt_loss(bad, tg, tl, ul, blank=0, fused_log_softmax=False)
    masked = lp.clone()
    masked[..., 4] = float("-inf")  # -inf log-probs (masked label) are allowed
    assert torch.isfinite(rnnt_loss(masked, tg, tl, ul, blank=0, fused_log_softmax=False))


@pytest.mark.parametrize("fused_log_softmax", [True, False])
def test_logprob_path_reads_only_the_lattice(fused_log_softmax):
    """NaN in the padding (frames past logit_lengths, labels past target_lengths) is never
    read: same loss and gradient as with zeros there; a label masked with -inf wherever
    it must be emitted leaves no alignment and raises (no silent inf loss)."""
    import torch
    from cutrans.interop.torch import rnnt_loss
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    tg = torch.tensor([[1, 2], [3, 1]], dtype=torch.int32)
    tl = torch.tensor([4, 2], dtype=torch.int32)
    ul = torch.tensor([2, 1], dtype=torch.int32)

    def run(x):
        x = x.clone().requires_grad_()
        inp = x if fused_log_softmax else x.log_softmax(-1)
        loss = rnnt_loss(inp, tg, tl, ul, blank=0, fused_log_softmax=fused_log_softmax)
        loss.backward()
        return loss.detach(), torch.nan_to_num(x.grad, nan=0.0)
    padded = z.clone()
    padded[1, 2:] = float("nan")  # sample 1: frames 2, 3 past its length
    padded[1, :, 2] = float("nan")  # sample 1: u = 2 past its one label
    want, want_g = run(z)
    got, got_g = run(padded)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_g, want_g, rtol=0, atol=0)
    masked = z.clone()
    masked[0, :, :, 2] = float("-inf")  # sample 0's second label, everywhere
    inp = masked if fused_log_softmax else masked.log_softmax(-1)
    with pytest.raises(ValueError, match=r"no alignment of sample 0"):
        rnnt_loss(inp, tg, tl, ul, blank=0, fused_log_softmax=fused_log_softmax)


def test_logprob_path_second_order_raises():
    """fused_log_softmax=False: a gradient penalty raises (the lattice's coefficients would
    be constants to autograd: a silently wrong second derivative)."""
    import torch
    from cutrans.interop.torch import rnnt_loss
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    tg = torch.tensor([[1, 2], [3, 1]], dtype=torch.int32)
    tl, ul = torch.tensor([4, 3], dtype=torch.int32), torch.tensor([2, 1], dtype=torch.int32)
    loss = rnnt_loss((x @ w.T).log_softmax(-1), tg, tl, ul, blank=0, fused_log_softmax=False)
    with pytest.raises(RuntimeError, match="second-order gradients are not supported"):
        torch.autograd.grad(loss, x, create_graph=True)
