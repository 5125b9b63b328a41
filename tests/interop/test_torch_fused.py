"""cutrans.interop.torch.transducer_loss / TransducerLoss against the core and a naive
PyTorch autograd oracle (full 4-D joint + log_softmax + alpha recursion)."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cutrans  # noqa: E402
from cutrans.interop.torch import TransducerLoss, transducer_loss  # noqa: E402
from interop_cases import fused_case  # noqa: E402
from oracles import torch_fused_losses  # noqa: E402
from tolerances import assert_close  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


def as_torch(case, dtype=torch.float64, requires_grad=True):
    enc, pred, w, b, y, tl, ul = case
    floats = [torch.tensor(a).to(dtype).requires_grad_(requires_grad) for a in (enc, pred, w, b)]
    return (*floats, torch.tensor(y), torch.tensor(tl), torch.tensor(ul))


def oracle(floats, y, tl, ul, activation="tanh", blank=0, reduction="mean"):
    leaves = [f.detach().double().requires_grad_() for f in floats]
    per = torch_fused_losses(*leaves, y, tl, ul, activation, blank)
    red = {"none": per.sum(), "mean": per.mean(), "sum": per.sum()}[reduction]
    grads = torch.autograd.grad(red, leaves)
    return per.detach(), red.detach(), grads


GRADS = ("enc", "pred", "weight", "bias")


def close(got, want, dtype_name, quantity):
    assert_close(np.asarray(got.detach().double()), np.asarray(want.double()), "fused",
                 dtype_name, quantity)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_matches_torch_oracle(dtype, activation):
    args = as_torch(fused_case(1), DTYPES[dtype])
    loss = transducer_loss(*args, activation=activation)
    assert loss.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    loss.backward()
    _, want, grads = oracle(args[:4], *args[4:], activation)
    close(loss, want, dtype, "loss")
    for name, x, g in zip(GRADS, args[:4], grads):
        assert x.grad.dtype == x.dtype
        close(x.grad, g, dtype, name)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("workspace,sample_wise", [(1 << 20, False), (2000, False),
                                                   (2000, True)])
def test_matches_core_chunked(reduction, workspace, sample_wise):
    case = fused_case(2, B=4, T=5, U=3, blank=6)
    args = as_torch(case)
    loss = transducer_loss(*args, reduction=reduction, blank=-1, max_workspace_bytes=workspace,
                           sample_wise=sample_wise, fastemit_lambda=0.1, clamp=0.5)
    loss.sum().backward()
    out = cutrans.transducer_loss(*case, reduction=reduction, blank=-1, fastemit_lambda=0.1,
                                  clamp=0.5)
    np.testing.assert_allclose(loss.detach().numpy(), out.loss, rtol=1e-12)
    for x, g in zip(args[:4], out.grads):
        np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-9, atol=1e-13)


def test_gradcheck_float64():
    args = as_torch(fused_case(3, B=2, T=3, U=2, H=3, V=4))
    assert torch.autograd.gradcheck(
        lambda *f: transducer_loss(*f, *args[4:], reduction="none"), args[:4])


@pytest.mark.parametrize("which", [(0,), (2, 3), (1,), ()])
def test_only_needed_gradients(which):
    args = list(as_torch(fused_case(4), requires_grad=False))
    for i in which:
        args[i].requires_grad_()
    loss = transducer_loss(*args)
    if not which:
        assert loss.grad_fn is None
        return
    loss.backward()
    _, _, grads = oracle(args[:4], *args[4:])
    for i in range(4):
        if i in which:
            close(args[i].grad, grads[i], "float64", GRADS[i])
        else:
            assert args[i].grad is None


def test_repeated_backward_retain_graph_and_upstream():
    args = as_torch(fused_case(5))
    per = transducer_loss(*args, reduction="none")
    up = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    per.backward(up, retain_graph=True)
    first = [x.grad.clone() for x in args[:4]]
    per.backward(up)
    for x, g in zip(args[:4], first):
        torch.testing.assert_close(x.grad, 2 * g)
    losses, ctx = cutrans.transducer_forward(*fused_case(5))
    for g, want in zip(first, cutrans.transducer_backward(ctx, up.numpy())):
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-10, atol=1e-13)


def test_non_contiguous_and_sliced_inputs():
    case = fused_case(6)
    enc, pred, w, b, y, tl, ul = case
    enc_tbh = torch.tensor(enc).transpose(0, 1).contiguous()  # time-major encoder output
    e = enc_tbh.transpose(0, 1).detach().requires_grad_()  # (B, T, H), non-contiguous
    pbig = torch.zeros(3, 4, 2 * 5, dtype=torch.float64)
    pbig[:, :, ::2] = torch.tensor(pred)
    p = pbig[:, :, ::2].detach().requires_grad_()  # stride 2 in H
    wt = torch.tensor(w).t().contiguous().t().detach().requires_grad_()  # column-major
    assert not (e.is_contiguous() or p.is_contiguous() or wt.is_contiguous())
    bb = torch.tensor(b, requires_grad=True)
    loss = transducer_loss(e, p, wt, bb, torch.tensor(y), torch.tensor(tl), torch.tensor(ul))
    loss.backward()
    out = cutrans.transducer_loss(*case)
    np.testing.assert_allclose(loss.item(), out.loss, rtol=1e-12)
    for x, g in zip((e, p, wt, bb), out.grads):
        np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-10, atol=1e-13)


def test_module_owns_linear_and_bias_none():
    case = fused_case(7)
    enc, pred, w, b, y, tl, ul = as_torch(case)
    lin = torch.nn.Linear(5, 7, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    mod = TransducerLoss(lin, reduction="sum")
    loss = mod(enc, pred, y, tl, ul)
    loss.backward()
    _, want, grads = oracle((enc, pred, w, b), y, tl, ul, reduction="sum")
    close(loss, want, "float64", "loss")
    close(lin.weight.grad, grads[2], "float64", "weight")
    close(lin.bias.grad, grads[3], "float64", "bias")
    assert list(dict(mod.named_parameters())) == ["output_layer.weight", "output_layer.bias"]
    # no bias: zeros, no gradient for it
    lin0 = torch.nn.Linear(5, 7, bias=False, dtype=torch.float64)
    l0 = TransducerLoss(lin0)(enc, pred, y, tl, ul)
    want0 = transducer_loss(enc, pred, lin0.weight, torch.zeros(7, dtype=torch.float64),
                            y, tl, ul)
    torch.testing.assert_close(l0, want0)
    m2 = TransducerLoss(in_features=5, vocab_size=7, dtype=torch.float64)
    assert m2.output_layer.weight.shape == (7, 5)


@pytest.mark.parametrize("change,exc,match", [
    ({"blank": 1}, ValueError, r"targets: expected no blank \(1\)"),
    ({"enc_lengths": [5, 1, 1]}, ValueError, r"enc_lengths: expected frame counts in \[1, 4\]"),
    ({"target_lengths": [4, 0, 0]}, ValueError, r"target_lengths: expected label counts"),
    ({"activation": "gelu"}, ValueError, r"activation: expected one of"),
    ({"pred_dtype": torch.float32}, TypeError, r"pred: expected the dtype of enc"),
    ({"max_workspace_bytes": 16}, ValueError, r"max_workspace_bytes=16 is too small"),
    ({"reduction": "avg"}, ValueError, r"reduction: expected one of"),
])
def test_errors_name_the_argument(change, exc, match):
    case = fused_case(8)
    case[4][0, 0] = 1
    enc, pred, w, b, y, tl, ul = as_torch(case)
    kw = dict(enc=enc, pred=pred, weight=w, bias=b, targets=y, enc_lengths=tl,
              target_lengths=ul)
    for k, val in change.items():
        if k == "pred_dtype":
            kw["pred"] = pred.to(val)
        elif k.endswith("lengths"):
            kw[k] = torch.tensor(val, dtype=torch.int32)
        else:
            kw[k] = val
    with pytest.raises(exc, match=match):
        transducer_loss(**kw)


def test_module_under_autocast_casts_the_output_layer():
    import torch
    from cutrans.interop.torch import TransducerLoss
    from interop_cases import fused_case
    enc, pred, w, b, targets, t_len, u_len = fused_case(3, dtype=np.float32)
    layer = torch.nn.Linear(w.shape[1], w.shape[0])
    loss_fn = TransducerLoss(layer)
    e = torch.tensor(enc, requires_grad=True)
    p = torch.tensor(pred)
    args = (torch.tensor(targets), torch.tensor(t_len), torch.tensor(u_len))
    loss = loss_fn(e.to(torch.bfloat16), p.to(torch.bfloat16), *args)  # as autocast does
    loss.backward()
    assert layer.weight.grad.dtype == torch.float32 and e.grad.dtype == torch.float32
    ref = loss_fn(e.detach().to(torch.bfloat16).float(), p.to(torch.bfloat16).float(), *args)
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=3e-2)


@pytest.mark.parametrize("dtype,scale", [("float16", 2.0 ** 16), ("bfloat16", 1 / 3)])
def test_loss_scale_in_float32_rounded_once(dtype, scale):
    """``(loss * scale).backward()`` -- what ``torch.amp.GradScaler`` does, with 2**16 beyond
    float16's range -- gives the scale-1 gradients times the scale, rounded once (the
    one-pass backward multiplies in float32); bfloat16 would round an inexact scale first."""
    args = as_torch(fused_case(9), DTYPES[dtype])
    transducer_loss(*args, reduction="sum").backward()
    unit = [x.grad.clone() for x in args[:4]]
    for x in args[:4]:
        x.grad = None
    (transducer_loss(*args, reduction="sum") * scale).backward()
    for name, x, g1 in zip(GRADS, args[:4], unit):
        want = (g1.float() * scale).to(g1.dtype)
        if name == "enc":  # the case is fit (dW, db, sums over rows, may overflow)
            assert torch.isfinite(want).float().mean() >= 0.5
        assert torch.equal(x.grad, want), name


def test_loss_scale_of_16_bit_gradients_goes_in_pieces(monkeypatch):
    from cutrans.interop import _torch_ops
    args = as_torch(fused_case(9), torch.float16)
    (transducer_loss(*args) * 2.0 ** 16).backward()
    whole = [x.grad.clone() for x in args[:4]]
    monkeypatch.setattr(_torch_ops, "SCALE_PIECE", 7)
    for x in args[:4]:
        x.grad = None
    (transducer_loss(*args) * 2.0 ** 16).backward()
    for name, x, g in zip(GRADS, args[:4], whole):
        assert torch.equal(x.grad, g), name


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_second_order_gradients_raise(reduction):
    """A gradient penalty raises instead of differentiating cutrans' saved results as
    constants: the one-pass backward at create_graph=True, the two-pass one (whose
    backward op has no formula) at the second derivative; plain backwards still work."""
    args = as_torch(fused_case(10))
    enc, w = args[0], args[2]
    want, = torch.autograd.grad(transducer_loss(*args, reduction=reduction).sum(), enc)
    assert torch.isfinite(want).all()
    with pytest.raises(RuntimeError, match="second-order gradients are not supported|"
                                           "no autograd formula"):
        g_enc, = torch.autograd.grad(transducer_loss(*args, reduction=reduction).sum(), enc,
                                     create_graph=True)
        torch.autograd.grad((g_enc ** 2).sum(), w)


SCALARS = [("fastemit_lambda", None), ("fastemit_lambda", "0.5"), ("fastemit_lambda", -0.5),
           ("max_workspace_bytes", 1e6), ("max_workspace_bytes", True), ("sample_wise", 1),
           ("blank", 1.0), ("blank", True), ("clamp", "0.1"), ("activation", 0)]


@pytest.mark.parametrize("name,value", SCALARS)
def test_bad_scalars_raise_the_core_error(name, value):
    """One rule per argument: the adapter raises the core's error (type and text)."""
    case = fused_case(8)
    with pytest.raises((TypeError, ValueError)) as core:
        cutrans.transducer_loss(*case, **{name: value})
    with pytest.raises(core.type, match=f"^{re.escape(str(core.value))}$"):
        transducer_loss(*as_torch(case), **{name: value})


def test_numpy_integer_blank_and_status_dtype():
    case = fused_case(8, blank=2)
    want = transducer_loss(*as_torch(case), blank=2)
    torch.testing.assert_close(transducer_loss(*as_torch(case), blank=np.int64(2)), want)
    with pytest.raises(TypeError, match=r"status: expected an int32 tensor of shape \(\), "
                                        r"got torch.int64 \(\)"):
        transducer_loss(*as_torch(case), blank=2, checks="device",
                        status=torch.zeros((), dtype=torch.int64))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_mean_backward_equals_the_cores(dtype):
    """The adapter applies the factors the one-pass gradients still owe (16-bit "mean":
    1/B on d_enc/d_pred, with the upstream gradient) exactly as the core's backward."""
    case = fused_case(11, B=5)
    args = as_torch(case, DTYPES[dtype])
    (transducer_loss(*args) * 4096.0).backward()
    np16 = [x.detach().numpy() if dtype == "float16" else
            x.detach().view(torch.int16).numpy().view(cutrans._dtypes.DTYPES[dtype].numpy)
            for x in args[:4]]
    _, ctx = cutrans.transducer_forward(*np16, *case[4:], reduction="mean")
    for name, x, want in zip(GRADS, args[:4], cutrans.transducer_backward(ctx, 4096.0)):
        got = x.grad.float().numpy()
        np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=name)


def test_frozen_output_layer_16_bit_mean():
    """float16 "mean" with weight and bias frozen (no dW/db): d_enc/d_pred as in the full
    call."""
    args = as_torch(fused_case(12), torch.float16)
    transducer_loss(*args).backward()
    want = [args[0].grad.clone(), args[1].grad.clone()]
    frozen = [a.detach().requires_grad_(i < 2) if i < 4 else a for i, a in enumerate(args)]
    transducer_loss(*frozen).backward()
    assert frozen[2].grad is None and frozen[3].grad is None
    for g, w in zip(frozen[:2], want):
        assert torch.equal(g.grad, w)


def test_bfloat16_without_ml_dtypes_owes_what_the_core_owes(monkeypatch):
    """Without ml_dtypes, bfloat16 CPU tensors reach the core as float32 copies (which owe
    nothing): the gradients then match the ml_dtypes route to bfloat16's precision."""
    from cutrans.interop import _torch_ops
    args = as_torch(fused_case(13, B=5), torch.bfloat16)
    transducer_loss(*args).backward()
    want = [a.grad.clone() for a in args[:4]]
    monkeypatch.setattr(_torch_ops, "_NP_BF16", None)
    again = [a.detach().requires_grad_() for a in args[:4]]
    transducer_loss(*again, *args[4:]).backward()
    for name, a, w in zip(GRADS, again, want):
        torch.testing.assert_close(a.grad.float(), w.float(), rtol=2e-2, atol=2e-3, msg=name)
