"""Property-based tests: both operations on random cases against the independent float64
NumPy reference (tests/np_reference.py), NumPy and emulated backends.

Random: B, T, U, V, H, ragged lengths with zero labels and single frames, padded sizes and
garbage padding, blank ids in [-V, V), clamp, FastEmit, dtypes, index dtypes, layouts,
-inf-masked labels, reductions or a random upstream gradient, workspace budgets from one
row per chunk to everything, sample-wise chunking, partial backward, and (emulated) the
CUDA thread scheduling order. Tolerances: tolerances.FUZZ. Profiles: fuzz_settings.py.
"""
import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, seed, settings, strategies as st  # noqa: E402

import cutrans  # noqa: E402
from fuzz_cases import fused_cases, logits_cases, pack  # noqa: E402
from fuzz_settings import FUZZ_SEED, examples  # noqa: E402
from np_reference import (fused_loss_grads, fused_term_magnitudes,  # noqa: E402
                          logits_loss_grad, term_magnitudes)
from tolerances import assert_close  # noqa: E402

MODES = st.sampled_from(["none", "mean", "sum", "upstream"])
ORDERS = st.sampled_from(["forward", "reverse", "shuffle"])


def backend_of(name, order):
    if name == "numpy":
        return "numpy"
    from cutrans.backends.kernel_backend import emulated_backend
    return emulated_backend(order=order)


def upstream_for(mode, B, rng):
    if mode == "upstream":
        return rng.standard_normal(B)
    return np.full(B, 1.0 / B if mode == "mean" else 1.0)


def reduce_ref(losses, mode):
    return {"none": losses, "upstream": losses, "mean": losses.mean(),
            "sum": losses.sum()}[mode]


def compute_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


def check_logits(case, backend, mode, up_seed):
    lat = case.lat
    t_len, u_len = lat.lengths()
    up = upstream_for(mode, lat.B, np.random.default_rng(up_seed))
    kw = dict(blank=lat.blank, clamp=case.clamp, fastemit_lambda=case.fastemit,
              layout=case.layout, backend=backend)
    if mode == "upstream":
        loss, ctx = cutrans.rnnt_loss_forward(case.logits, case.targets, t_len, u_len, **kw)
        grad = cutrans.rnnt_loss_backward(ctx, up)
    else:
        loss, grad = cutrans.rnnt_loss(case.logits, case.targets, t_len, u_len,
                                       reduction=mode, return_grad=True, **kw)
    ref_l, ref_g = logits_loss_grad(case.padded, case.targets, lat.t_len, lat.u_len,
                                    lat.blank_id, fastemit_lambda=case.fastemit,
                                    clamp=case.clamp or 0.0, upstream=up)
    loss, grad = np.asarray(loss), np.asarray(grad)
    assert loss.dtype == compute_dtype(case.dtype)
    assert grad.dtype == case.logits.dtype and grad.shape == case.logits.shape
    assert np.isfinite(loss).all() and np.isfinite(grad.astype(np.float64)).all()
    if case.layout == "packed":
        ref_g = pack(ref_g, lat)
    else:  # exactly zero on the padding
        valid = np.zeros(grad.shape[:3], bool)
        for b in range(lat.B):
            valid[b, :lat.t_len[b], :lat.u_len[b] + 1] = True
        assert not grad.astype(np.float64)[~valid].any(), "nonzero gradient on the padding"
    if case.masked is not None:
        assert not grad[..., case.masked].astype(np.float64).any()
    # errors scale with the magnitude of the terms (np_reference.term_magnitudes)
    zmax = max(float(np.abs(case.padded[b, :lat.t_len[b], :lat.u_len[b] + 1]).max(
        initial=0, where=np.isfinite(case.padded[b, :lat.t_len[b], :lat.u_len[b] + 1])))
        for b in range(lat.B))
    mag_loss, mag_grad = term_magnitudes(zmax, lat.t_len, lat.u_len, up, ref_l,
                                         case.fastemit)
    assert_close(loss, reduce_ref(ref_l, mode), "fuzz", case.dtype, "loss", floor=mag_loss)
    assert_close(grad, ref_g, "fuzz", case.dtype, "grad", floor=mag_grad)


@seed(FUZZ_SEED)
@settings(max_examples=examples(1000))
@given(case=logits_cases(), mode=MODES, up_seed=st.integers(0, 2**16))
def test_logits_op_numpy(case, mode, up_seed):
    check_logits(case, "numpy", mode, up_seed)


@seed(FUZZ_SEED)
@settings(max_examples=examples(300))
@given(case=logits_cases(max_V=160), mode=MODES, up_seed=st.integers(0, 2**16), order=ORDERS)
def test_logits_op_emulated(case, mode, up_seed, order):
    check_logits(case, backend_of("emulated", order), mode, up_seed)


def check_fused(case, backend, mode, up_seed, needs):
    lat = case.lat
    t_len, u_len = lat.lengths()
    up = upstream_for(mode, lat.B, np.random.default_rng(up_seed))
    kw = dict(activation=case.activation, blank=lat.blank, clamp=case.clamp,
              fastemit_lambda=case.fastemit, max_workspace_bytes=case.budget(),
              sample_wise=case.sample_wise, backend=backend)
    if mode == "upstream":
        loss, ctx = cutrans.transducer_forward(*case.inputs, case.targets, t_len, u_len, **kw)
        grads = cutrans.transducer_backward(ctx, up, needs=needs)
    elif mode == "eval":
        out = cutrans.transducer_loss(*case.inputs, case.targets, t_len, u_len,
                                      reduction="none", compute_grad=False, **kw)
        loss, grads = out.loss, None
        assert out.grads is None
    else:
        out = cutrans.transducer_loss(*case.inputs, case.targets, t_len, u_len,
                                      reduction=mode, **kw)
        loss, grads = out.loss, out.grads
    ref_l, ref_g = fused_loss_grads(*(x.astype(np.float64) for x in case.inputs), case.targets,
                                    lat.t_len, lat.u_len, lat.blank_id,
                                    activation=case.activation, fastemit_lambda=case.fastemit,
                                    clamp=case.clamp or 0.0, upstream=up,
                                    need_grad=grads is not None)
    mags = fused_term_magnitudes(*(x.astype(np.float64) for x in case.inputs), lat.t_len,
                                 lat.u_len, ref_l, activation=case.activation,
                                 fastemit_lambda=case.fastemit, upstream=up)
    loss = np.asarray(loss)
    assert loss.dtype == compute_dtype(case.dtype) and np.isfinite(loss).all()
    assert_close(loss, reduce_ref(ref_l, "none" if mode == "eval" else mode), "fuzz",
                 case.dtype, "fused_loss", floor=mags["loss"])
    if grads is None:
        return
    for name, g, r, x, need in zip(("enc", "pred", "weight", "bias"), grads, ref_g,
                                   case.inputs, needs if mode == "upstream" else (True,) * 4):
        if not need:
            assert g is None, name
            continue
        assert g.dtype == x.dtype and g.shape == x.shape, name
        g64 = g.astype(np.float64)
        assert np.isfinite(g64).all(), name
        assert_close(g, r, "fuzz", case.dtype, name, f"d_{name}", floor=mags[name])
    if needs[0] or mode != "upstream":  # nothing beyond each sample's lengths
        for b in range(lat.B):
            assert not grads.enc[b, lat.t_len[b]:].astype(np.float64).any()
    if needs[1] or mode != "upstream":
        for b in range(lat.B):
            assert not grads.pred[b, lat.u_len[b] + 1:].astype(np.float64).any()


NEEDS = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans())


@seed(FUZZ_SEED)
@settings(max_examples=examples(800))
@given(case=fused_cases(), mode=st.one_of(MODES, st.just("eval")),
       up_seed=st.integers(0, 2**16), needs=NEEDS)
def test_fused_op_numpy(case, mode, up_seed, needs):
    check_fused(case, "numpy", mode, up_seed, needs)


@seed(FUZZ_SEED)
@settings(max_examples=examples(250))
@given(case=fused_cases(max_H=40), mode=st.one_of(MODES, st.just("eval")),
       up_seed=st.integers(0, 2**16), needs=NEEDS, order=ORDERS)
def test_fused_op_emulated(case, mode, up_seed, needs, order):
    check_fused(case, backend_of("emulated", order), mode, up_seed, needs)
