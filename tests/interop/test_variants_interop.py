"""The variants through the PyTorch and JAX adapters: the same losses and gradients as the
core (whose variants tests/core/test_variants.py checks against independent oracles),
eager and jitted, both reductions; adapter-level argument errors."""
import re

import numpy as np
import pytest

import cutrans
from tolerances import assert_close

V = 6
SPECS = {
    "multiblank": dict(variant="multiblank", big_blank_durations=[2, 3], sigma=0.05),
    "tdt-omega": dict(variant="tdt", durations=[0, 1, 2], sigma=0.05, omega=0.3),
    "modified": dict(variant="modified", delay_penalty=0.1),
}


def case(spec, seed=0, B=3, T=5, U=3, H=4):
    """(logits, enc, pred, weight, bias, targets, t_len, u_len, blank), float64."""
    rng = np.random.default_rng(seed)
    n = V + len(spec.get("durations", ()))
    blank = V - 1 if spec["variant"] == "multiblank" else 0
    labels = [1, 2] if spec["variant"] == "multiblank" else list(range(1, V))
    t_len = np.array([T, 2, 4])
    u_len = np.array([U, 0, 2])  # U_b <= T_b: valid for "modified" too
    targets = rng.choice(labels, size=(B, U))
    logits = rng.standard_normal((B, T, U + 1, n))
    enc = rng.standard_normal((B, T, H))
    pred = rng.standard_normal((B, U + 1, H))
    weight = rng.standard_normal((n, H)) / 2
    bias = rng.standard_normal(n) * 0.1
    return logits, enc, pred, weight, bias, targets, t_len, u_len, blank


@pytest.mark.parametrize("name", list(SPECS))
def test_torch_matches_core(name):
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import RNNTLoss, TransducerLoss, rnnt_loss, transducer_loss
    spec = SPECS[name]
    logits, enc, pred, weight, bias, targets, t_len, u_len, blank = case(spec)
    ints = [torch.tensor(a) for a in (targets, t_len, u_len)]
    # logits op, reduction none (two passes) with a per-sample upstream gradient
    up = np.array([1.0, -0.5, 2.0])
    ref, ref_g = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                                   return_grad=True, **spec)
    x = torch.tensor(logits, requires_grad=True)
    got = rnnt_loss(x, *ints, blank=blank, reduction="none", **spec)
    (got * torch.tensor(up)).sum().backward()
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12)
    ref_up = cutrans.rnnt_loss_backward(
        cutrans.rnnt_loss_forward(logits, targets, t_len, u_len, blank=blank, **spec)[1], up)
    np.testing.assert_allclose(x.grad.numpy(), ref_up, rtol=1e-10, atol=1e-13)
    mod = RNNTLoss(blank=blank, reduction="sum", **spec)
    np.testing.assert_allclose(mod(torch.tensor(logits), *ints).item(), ref.sum(), rtol=1e-12)
    # fused op: one pass (mean) and two passes (none), against the core
    out = cutrans.transducer_loss(enc, pred, weight, bias, targets, t_len, u_len, blank=blank,
                                  reduction="mean", **spec)
    for reduction in ("mean", "none"):
        ts = [torch.tensor(a, requires_grad=True) for a in (enc, pred, weight, bias)]
        loss = transducer_loss(*ts, *ints, blank=blank, reduction=reduction, **spec)
        (loss.mean() if reduction == "none" else loss).backward()
        np.testing.assert_allclose(loss.detach().numpy().mean(), out.loss, rtol=1e-12)
        for t, g in zip(ts, out.grads):
            np.testing.assert_allclose(t.grad.numpy(), g, rtol=1e-10, atol=1e-13)
    lin = torch.nn.Linear(enc.shape[-1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    module = TransducerLoss(lin, blank=blank, **spec)
    np.testing.assert_allclose(module(torch.tensor(enc), torch.tensor(pred), *ints).item(),
                               out.loss, rtol=1e-12)


def test_torch_argument_errors():
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import RNNTLoss, TransducerLoss, rnnt_loss
    logits, *_, targets, t_len, u_len, _ = case(SPECS["modified"])
    ints = [torch.tensor(a) for a in (targets, t_len, u_len)]
    x = torch.tensor(logits).log_softmax(-1)
    with pytest.raises(ValueError, match="fused_log_softmax: False supports the standard"):
        rnnt_loss(x, *ints, fused_log_softmax=False, variant="modified")
    with pytest.raises(TypeError, match="durations: expected ints"):
        RNNTLoss(variant="tdt", durations=[0, 1.0])
    with pytest.raises(TypeError, match="sigma: expected a real number"):
        TransducerLoss(in_features=4, vocab_size=6, variant="multiblank", sigma="0.1")
    with pytest.raises(ValueError, match="omega: not an argument of variant='modified'"):
        rnnt_loss(torch.tensor(logits), *ints, blank=0, variant="modified", omega=0.5)


@pytest.mark.parametrize("name", list(SPECS))
def test_jax_matches_core(name, x64):
    jax = x64
    import jax.numpy as jnp
    from cutrans.interop.jax import rnnt_loss, transducer_loss
    spec = SPECS[name]
    logits, enc, pred, weight, bias, targets, t_len, u_len, blank = case(spec, seed=1)
    ints = [jnp.asarray(a) for a in (targets, t_len, u_len)]
    ref, ref_g = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="sum",
                                   return_grad=True, **spec)

    def f(x, *i):
        return rnnt_loss(x, *i, blank=blank, reduction="sum", **spec)
    for fn in (f, jax.jit(f)):
        loss, g = jax.value_and_grad(fn)(jnp.asarray(logits), *ints)
        # tables scaled by the largest value: on a GPU this is CuPy against NumPy
        assert_close(np.asarray(loss), ref, "logits", "float64", "loss")
        assert_close(np.asarray(g), ref_g, "logits", "float64", "grad")
    out = cutrans.transducer_loss(enc, pred, weight, bias, targets, t_len, u_len, blank=blank,
                                  reduction="sum", **spec)
    for reduction in ("sum", "none"):
        def h(e, p, w, b):
            return transducer_loss(e, p, w, b, *ints, blank=blank, reduction=reduction,
                                   **spec).sum()
        loss, grads = jax.jit(jax.value_and_grad(h, argnums=(0, 1, 2, 3)))(
            *map(jnp.asarray, (enc, pred, weight, bias)))
        assert_close(np.asarray(loss), out.loss, "fused", "float64", "loss")
        for quantity, g, r in zip(("enc", "pred", "weight", "bias"), grads, out.grads):
            assert_close(np.asarray(g), r, "fused", "float64", quantity)


@pytest.mark.parametrize("bad", [dict(variant="bogus"), dict(variant="tdt"), dict(sigma=0.1),
                                 dict(variant="modified", omega=0.5),
                                 dict(variant="multiblank", big_blank_durations=[1]),
                                 dict(delay_penalty=-1.0)])
def test_torch_modules_name_a_bad_variant_when_built(bad):
    """The module constructors raise the error the first call would (what needs no
    vocabulary), instead of at the first forward."""
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import RNNTLoss, TransducerLoss, rnnt_loss
    logits, *_, targets, t_len, u_len, _ = case(SPECS["modified"])
    ints = [torch.tensor(a) for a in (targets, t_len, u_len)]
    with pytest.raises(ValueError) as call:
        rnnt_loss(torch.tensor(logits), *ints, blank=0, **bad)
    for build in (lambda: RNNTLoss(**bad), lambda: TransducerLoss(torch.nn.Linear(4, 6), **bad)):
        with pytest.raises(ValueError, match=f"^{re.escape(str(call.value))}$"):
            build()
