"""cutrans.interop.jax: eager, jit, grad, value_and_grad, vmap; both callback routes."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

import cutrans  # noqa: E402
from cutrans.interop import jax as cj  # noqa: E402
from interop_cases import fused_case, logits_case  # noqa: E402
from tolerances import assert_close  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")
NP_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
             "float64": np.float64}


@pytest.fixture(autouse=True)
def x64_and_route(x64):
    """float64 on (conftest's x64); the route restored afterwards."""
    yield
    cj.ROUTE = None


@pytest.fixture(params=["pure", "buffer"])
def route(request):
    cj.ROUTE = request.param
    return request.param


def close(got, want, dtype, table, quantity):
    assert_close(np.asarray(got, np.float64), np.asarray(want, np.float64), table, dtype,
                 quantity)


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_rnnt_loss_eager_and_jit_match_core(dtype, reduction, route):
    logits, targets, t_len, u_len = logits_case(1, V=6, blank=5)
    x = logits.astype(NP_DTYPES[dtype])
    xr = x.astype(np.float64)
    want, want_g = cutrans.rnnt_loss(xr, targets, t_len, u_len, blank=5, reduction=reduction,
                                     return_grad=True)

    def f(x):
        return cj.rnnt_loss(x, targets, t_len, u_len, blank=-1, reduction=reduction).sum()

    X = jnp.asarray(x)
    for fn in (jax.value_and_grad(f), jax.jit(jax.value_and_grad(f))):
        loss, g = fn(X)
        assert loss.dtype == (jnp.float64 if dtype == "float64" else jnp.float32)
        assert g.dtype == X.dtype and g.shape == X.shape
        close(loss, np.sum(want), dtype, "logits", "loss")
        close(g.astype(np.float64), want_g, dtype, "logits", "grad")
    close(jax.grad(f)(X).astype(np.float64), want_g, dtype, "logits", "grad")


def test_rnnt_loss_vmap_and_jit_with_traced_integers(route):
    logits, targets, t_len, u_len = logits_case(2)
    xs = np.stack([logits, 2 * logits])
    f = jax.jit(lambda x, y, tl, ul: cj.rnnt_loss(x, y, tl, ul, reduction="sum",
                                                  fastemit_lambda=0.2, clamp=0.3))
    got = jax.vmap(f, in_axes=(0, None, None, None))(xs, targets, t_len, u_len)
    want = [cutrans.rnnt_loss(x, targets, t_len, u_len, reduction="sum", fastemit_lambda=0.2)
            for x in xs]
    close(got, want, "float64", "logits", "loss")  # on a GPU: CuPy against NumPy
    gv = jax.vmap(jax.grad(lambda x: cj.rnnt_loss(x, targets, t_len, u_len, clamp=0.3)))(xs)
    for g, x in zip(gv, xs):
        _, want_g = cutrans.rnnt_loss(x, targets, t_len, u_len, clamp=0.3, return_grad=True)
        close(g, want_g, "float64", "logits", "grad")


@pytest.mark.parametrize("dtype", list(NP_DTYPES))
def test_transducer_loss_matches_core(dtype, route):
    case = fused_case(3, blank=2)
    floats = [a.astype(NP_DTYPES[dtype]) for a in case[:4]]
    ints = case[4:]
    out = cutrans.transducer_loss(*(a.astype(np.float64) for a in floats), *ints, blank=2,
                                  reduction="sum", activation="relu")

    def f(*fl):
        return cj.transducer_loss(*fl, *ints, blank=2, reduction="sum", activation="relu",
                                  max_workspace_bytes=3000)

    for fn in (jax.value_and_grad(f, argnums=(0, 1, 2, 3)),
               jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))):
        loss, grads = fn(*map(jnp.asarray, floats))
        close(loss, out.loss, dtype, "fused", "loss")
        for name, g, want, x in zip(("enc", "pred", "weight", "bias"), grads, out.grads,
                                    floats):
            assert g.dtype == x.dtype
            close(g.astype(np.float64), want, dtype, "fused", name)


def test_transducer_loss_partial_grad_and_vmap():
    case = fused_case(4)
    ints = case[4:]
    out = cutrans.transducer_loss(*case, reduction="mean")
    g_w = jax.jit(jax.grad(lambda w: cj.transducer_loss(case[0], case[1], w, case[3], *ints),
                           ))(case[2])
    close(g_w, out.grads.weight, "float64", "fused", "weight")  # on a GPU: CuPy vs NumPy
    encs = np.stack([case[0], -case[0]])
    got = jax.vmap(lambda e: cj.transducer_loss(e, *case[1:]))(encs)
    want = [cutrans.transducer_loss(e, *case[1:]).loss for e in encs]
    close(got, want, "float64", "fused", "loss")


def test_eager_errors_are_python_exceptions():
    logits, targets, t_len, u_len = logits_case(5, V=6)
    targets[0, 0] = 1
    with pytest.raises(ValueError, match=r"targets: expected no blank \(1\)"):
        cj.rnnt_loss(logits, targets, t_len, u_len, blank=1)
    with pytest.raises(ValueError, match=r"logit_lengths: expected frame counts in \[1, 5\]"):
        cj.rnnt_loss(logits, targets, t_len + 5, u_len)
    with pytest.raises(ValueError, match=r"reduction: expected one of"):
        cj.rnnt_loss(logits, targets, t_len, u_len, reduction="avg")
    with pytest.raises(TypeError, match=r"targets: expected dtype int32 or int64"):
        cj.rnnt_loss(logits, targets.astype(np.float32), t_len, u_len)
    with pytest.raises(ValueError, match=r"logits: expected size 4 \(U\+1"):
        cj.rnnt_loss(logits[:, :, :3], targets, t_len, u_len)
    case = fused_case(6)
    with pytest.raises(ValueError, match=r"enc_lengths: expected frame counts in \[1, 4\]"):
        cj.transducer_loss(*case[:5], case[5] + 9, case[6])
    with pytest.raises(TypeError, match=r"weight: expected the dtype of enc"):
        cj.transducer_loss(case[0], case[1], case[2].astype(np.float32), *case[3:])
    with pytest.raises(ValueError, match=r"activation: expected one of"):
        cj.transducer_loss(*case, activation="gelu")
    # a budget below one row on every path: at the call, also under jit (static shapes)
    with pytest.raises(ValueError, match=r"max_workspace_bytes=100 is too small: one row of "
                                         r"the lattice needs at least \d+ bytes"):
        jax.jit(lambda *a: cj.transducer_loss(*a, max_workspace_bytes=100))(*case)


def test_jit_value_errors_surface_with_the_message():
    """Under jit the values are checked inside the callback: JaxRuntimeError + message."""
    logits, targets, t_len, u_len = logits_case(7)
    f = jax.jit(lambda tl: cj.rnnt_loss(logits, targets, tl, u_len))
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"logit_lengths: expected frame counts in \[1, 5\]"):
        f(t_len + 7).block_until_ready()
    assert np.isfinite(f(t_len))  # the program still works afterwards


def test_jit_blank_error_fused():
    case = list(fused_case(8))
    case[4][0, 0] = 3
    f = jax.jit(lambda y: cj.transducer_loss(*case[:4], y, *case[5:], blank=3))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"targets: expected no blank \(3\)"):
        f(case[4]).block_until_ready()


@pytest.mark.parametrize("dtype,scale", [("float16", 2.0 ** 16), ("bfloat16", 1 / 3)])
def test_transducer_loss_scale_in_float32_rounded_once(dtype, scale):
    """``grad(loss * scale)`` (a loss scale of 2**16 is beyond float16's range): the scale-1
    gradients times the scale, rounded once (the one-pass backward multiplies in float32)."""
    case = fused_case(9)
    floats = [jnp.asarray(x.astype(NP_DTYPES[dtype])) for x in case[:4]]

    def grads(s):
        return jax.grad(lambda *f: cj.transducer_loss(*f, *case[4:], reduction="sum") * s,
                        argnums=(0, 1, 2, 3))(*floats)
    for name, g, g1 in zip(("enc", "pred", "weight", "bias"), grads(scale), grads(1.0)):
        want = np.asarray((g1.astype(jnp.float32) * scale).astype(g1.dtype), np.float32)
        if name == "enc":  # the case is fit (dW, db, sums over rows, may overflow)
            assert np.isfinite(want).mean() >= 0.5
        np.testing.assert_array_equal(np.asarray(g, np.float32), want, err_msg=name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_second_order_gradients_raise(reduction):
    """A gradient penalty raises (the callbacks have no JVP) instead of a wrong value."""
    case = fused_case(3)

    def grad_enc(w):
        return jax.grad(lambda e: jnp.sum(cj.transducer_loss(
            e, case[1], w, case[3], *case[4:], reduction=reduction)))(case[0])
    assert np.isfinite(grad_enc(case[2])).all()
    with pytest.raises(ValueError, match="JVP"):
        jax.grad(lambda w: jnp.sum(grad_enc(w) ** 2))(case[2])


def test_eager_nan_error_carries_the_core_message():
    """NaN logits are found by the computation (inside the callback), eagerly too."""
    logits, targets, t_len, u_len = logits_case(5, V=6)
    logits[0, 0, 0, 0] = np.nan
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"logits: expected finite values"):
        jax.block_until_ready(cj.rnnt_loss(logits, targets, t_len, u_len))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_mean_backward_equals_the_cores(dtype):
    """The factors the one-pass gradients owe (16-bit "mean": 1/B on d_enc/d_pred) are
    applied with the upstream gradient exactly as the core's backward does. Bit for bit, so
    the arrays stay on the CPU device (on a GPU machine JAX's default device would run the
    CuPy kernels against the core's NumPy run)."""
    case = fused_case(11, B=5)
    floats = [x.astype(NP_DTYPES[dtype]) for x in case[:4]]
    cpu = jax.devices("cpu")[0]
    got = jax.grad(lambda *f: cj.transducer_loss(*f, *case[4:]) * 4096.0,
                   argnums=(0, 1, 2, 3))(*(jax.device_put(x, cpu) for x in floats))
    _, ctx = cutrans.transducer_forward(*floats, *case[4:], reduction="mean")
    for name, g, want in zip(("enc", "pred", "weight", "bias"), got,
                             cutrans.transducer_backward(ctx, 4096.0)):
        np.testing.assert_array_equal(np.asarray(g, np.float32), want.astype(np.float32),
                                      err_msg=name)
