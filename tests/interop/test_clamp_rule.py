"""One clamp rule through every entry point (torchaudio's): ``None`` or ``clamp <= 0`` is off;
a positive ``clamp`` clips dLoss/dlogits (the fused op: dLoss/dz) to ``[-clamp, clamp]``
before the upstream scaling; NaN, +inf and non-numbers are refused naming ``clamp``.

Every entry point is a function ``clamp -> (loss, [gradients])`` (float64; ``reduction="mean"``,
the forward/backward pairs with an upstream gradient of their own) checked against the
float64 oracle of tests/np_reference.py. The torch and JAX entry points skip one by one
without their framework (tests/test_numpy_only.py).
"""
import numpy as np
import pytest

import cutrans
import np_reference as ref
from interop_cases import fused_case, logits_case
from tolerances import as_float64, assert_close

OFF = [None, 0, 0.0, -0.0, -0.01, -1]
BAD = [(float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError),
       (True, TypeError)]
CLAMP = 0.05  # below most gradient entries of these cases: clipping changes every result

LOGITS = logits_case(3, B=3, T=5, U=3, V=6)
FUSED = fused_case(4, B=3, T=4, U=3, H=5, V=7)
#: the forward/backward pairs' upstream gradient; the other entry points reduce by "mean"
#: (upstream 1/B): both scale after clipping, which a clip after the scaling would fail
UPSTREAM = np.array([0.5, 2.0, 3.0])


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------- logits entry points
def core_rnnt_loss(backend):
    def run(clamp):
        loss, g = cutrans.rnnt_loss(*LOGITS, blank=0, clamp=clamp, return_grad=True,
                                    backend=backend)
        return as_float64(loss), [as_float64(g)]
    return run


def core_rnnt_forward_backward(clamp):
    losses, ctx = cutrans.rnnt_loss_forward(*LOGITS, blank=0, clamp=clamp)
    return (as_float64(losses) @ UPSTREAM,
            [as_float64(cutrans.rnnt_loss_backward(ctx, UPSTREAM))])


def _torch_logits(call):
    torch = _torch()
    x = torch.tensor(LOGITS[0], requires_grad=True)
    y, tl, ul = (torch.tensor(a) for a in LOGITS[1:])
    loss = call(torch, x, y, tl, ul)
    loss.backward()
    return as_float64(loss), [as_float64(x.grad)]


def torch_rnnt_loss(clamp):
    def call(torch, *a):
        from cutrans.interop.torch import rnnt_loss
        return rnnt_loss(*a, blank=0, clamp=clamp)
    return _torch_logits(call)


def torch_rnnt_module(clamp):
    def call(torch, *a):
        from cutrans.interop.torch import RNNTLoss
        return RNNTLoss(blank=0, clamp=clamp)(*a)
    return _torch_logits(call)


def jax_rnnt_loss(clamp):  # float64 on: the tests request conftest's x64 for "jax." entries
    import jax
    from cutrans.interop import jax as cj
    loss, g = jax.value_and_grad(lambda x: cj.rnnt_loss(x, *LOGITS[1:], blank=0, clamp=clamp))(
        jax.numpy.asarray(LOGITS[0]))
    return as_float64(loss), [as_float64(g)]


LOGITS_ENTRIES = {"cutrans.rnnt_loss[numpy]": core_rnnt_loss("numpy"),
                  "cutrans.rnnt_loss[emulated]": core_rnnt_loss("emulated"),
                  "cutrans.rnnt_loss_forward/backward": core_rnnt_forward_backward,
                  "torch.rnnt_loss": torch_rnnt_loss,
                  "torch.RNNTLoss": torch_rnnt_module,
                  "jax.rnnt_loss": jax_rnnt_loss}


# ---------------------------------------------------------------- fused entry points
def core_transducer_loss(backend):
    def run(clamp):
        out = cutrans.transducer_loss(*FUSED, clamp=clamp, backend=backend)
        return as_float64(out.loss), [as_float64(g) for g in out.grads]
    return run


def core_transducer_forward_backward(clamp):
    losses, ctx = cutrans.transducer_forward(*FUSED, clamp=clamp)
    grads = cutrans.transducer_backward(ctx, UPSTREAM)
    return as_float64(losses) @ UPSTREAM, [as_float64(g) for g in grads]


def _torch_fused(call):
    torch = _torch()
    floats = [torch.nn.Parameter(torch.tensor(a)) for a in FUSED[:4]]
    ints = [torch.tensor(a) for a in FUSED[4:]]
    loss = call(torch, floats, ints)
    loss.backward()
    return as_float64(loss), [as_float64(x.grad) for x in floats]


def torch_transducer_loss(clamp):
    def call(torch, floats, ints):
        from cutrans.interop.torch import transducer_loss
        return transducer_loss(*floats, *ints, clamp=clamp)
    return _torch_fused(call)


def torch_transducer_module(clamp):
    def call(torch, floats, ints):
        from cutrans.interop.torch import TransducerLoss
        V, H = floats[2].shape
        lin = torch.nn.Linear(H, V, dtype=torch.float64)
        lin.weight, lin.bias = floats[2], floats[3]  # the gradients are read from these
        return TransducerLoss(lin, clamp=clamp)(floats[0], floats[1], *ints)
    return _torch_fused(call)


def jax_transducer_loss(clamp):
    import jax
    from cutrans.interop import jax as cj
    loss, grads = jax.value_and_grad(
        lambda *f: cj.transducer_loss(*f, *FUSED[4:], clamp=clamp),
        argnums=(0, 1, 2, 3))(*map(jax.numpy.asarray, FUSED[:4]))
    return as_float64(loss), [as_float64(g) for g in grads]


FUSED_ENTRIES = {"cutrans.transducer_loss[numpy]": core_transducer_loss("numpy"),
                 "cutrans.transducer_loss[emulated]": core_transducer_loss("emulated"),
                 "cutrans.transducer_forward/backward": core_transducer_forward_backward,
                 "torch.transducer_loss": torch_transducer_loss,
                 "torch.TransducerLoss": torch_transducer_module,
                 "jax.transducer_loss": jax_transducer_loss}

ENTRIES = {**LOGITS_ENTRIES, **FUSED_ENTRIES}


def run_entry(request, name, clamp):
    if name.startswith("jax."):
        request.getfixturevalue("x64")  # float64 (conftest.py); skips without jax
    return ENTRIES[name](clamp)


def oracle(name, clamp):
    """(loss, [gradients]) of the float64 oracle: the clamp applied to dLoss/dlogits, then
    the upstream gradient."""
    case = LOGITS if name in LOGITS_ENTRIES else FUSED
    B = len(case[-1])
    up = UPSTREAM if name.endswith("forward/backward") else np.full(B, 1.0 / B)
    if name in LOGITS_ENTRIES:
        losses, g = ref.logits_loss_grad(*case, 0, clamp=clamp, upstream=up)
        return losses @ up, [g]
    losses, grads = ref.fused_loss_grads(*case, 0, clamp=clamp, upstream=up)
    return losses @ up, list(grads)


def check(name, got, want):
    table = "logits" if name in LOGITS_ENTRIES else "fused"
    quantities = ["grad"] if table == "logits" else ["enc", "pred", "weight", "bias"]
    assert_close(got[0], want[0], table, "float64", "loss", what=f"{name} loss")
    assert len(got[1]) == len(quantities)
    for g, w, q in zip(got[1], want[1], quantities):
        assert_close(g, w, table, "float64", q, what=f"{name} d{q}")


@pytest.mark.parametrize("name", list(ENTRIES))
def test_positive_clamp_clips_like_the_oracle(request, name):
    got = run_entry(request, name, CLAMP)
    check(name, got, oracle(name, CLAMP))
    # the case is one where clipping matters: the unclamped gradients differ
    free = oracle(name, 0.0)[1]
    assert max(np.abs(a - b).max() for a, b in zip(got[1], free)) > 1e-3


@pytest.mark.parametrize("off", OFF, ids=repr)
@pytest.mark.parametrize("name", list(ENTRIES))
def test_clamp_at_or_below_zero_is_off(request, name, off):
    got = run_entry(request, name, off)
    check(name, got, oracle(name, 0.0))
    unset = run_entry(request, name, None)
    assert np.array_equal(got[0], unset[0])
    for a, b in zip(got[1], unset[1]):
        assert np.array_equal(a, b), f"{name}: clamp={off!r} and clamp=None differ"


@pytest.mark.parametrize("bad,error", BAD, ids=[repr(b) for b, _ in BAD])
@pytest.mark.parametrize("name", list(ENTRIES))
def test_bad_clamp_is_refused_naming_it(request, name, bad, error):
    with pytest.raises(error, match="clamp"):
        run_entry(request, name, bad)


def test_torch_log_probs_path_clips_the_same_way():
    """``fused_log_softmax=False`` (log-probabilities in, their own gradient out): the
    clamped gradient is the unclamped one clipped; <= 0 is off."""
    torch = _torch()
    from cutrans.interop.torch import rnnt_loss
    lp = torch.log_softmax(torch.tensor(LOGITS[0]), -1)
    y, tl, ul = (torch.tensor(a) for a in LOGITS[1:])

    def run(clamp):
        x = lp.clone().requires_grad_()
        loss = rnnt_loss(x, y, tl, ul, blank=0, clamp=clamp, reduction="sum",
                         fused_log_softmax=False)
        loss.backward()
        return as_float64(loss), as_float64(x.grad)

    free_loss, free = run(None)
    assert_close(free_loss, ref.logits_loss_grad(*LOGITS, 0)[0].sum(), "logits", "float64",
                 "loss")
    loss, clipped = run(CLAMP)
    assert loss == free_loss  # the clamp changes gradients, never the loss
    assert_close(clipped, np.clip(free, -CLAMP, CLAMP), "logits", "float64", "grad")
    assert np.abs(clipped - free).max() > 1e-3
    for off in OFF:
        assert np.array_equal(run(off)[1], free), off
