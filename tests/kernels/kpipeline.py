"""Whole-pipeline comparisons through the public API: a backend under test vs "numpy".

Inputs are built on the host; ``to_xp`` moves them to the tested backend's arrays.
"""
from __future__ import annotations

import numpy as np

import cutrans
from cutrans._fused import workspace_bytes
from kcases import Case, assert_close, np_dtype, to_np, to_xp


def logits_inputs(seed, dtype, layout, B=4, T=6, U=4, V=9):
    case = Case(seed, B, T, U, V)
    z = case.logits(dtype, layout, pad_value=0.0)
    return case, (z, case.targets, case.T.astype(np.int32), case.U.astype(np.int32))


def check_rnnt_loss(backend, xp, seed, dtype, layout, *, fastemit=0.0, clamp=None,
                    reduction="mean", stats=None):
    case, args = logits_inputs(seed, dtype, layout)
    kw = dict(blank=case.blank, reduction=reduction, clamp=clamp, fastemit_lambda=fastemit,
              layout=layout, return_grad=True)
    ref_loss, ref_grad = cutrans.rnnt_loss(*args, backend="numpy", **kw)
    loss, grad = cutrans.rnnt_loss(*(to_xp(a, xp) for a in args), backend=backend, **kw)
    cd = "float64" if dtype == "float64" else "float32"
    assert_close(to_np(loss), ref_loss, cd, "rnnt_loss loss", stats, f"rnnt_loss loss {dtype}")
    g = to_np(grad, dtype)
    assert g.dtype == np_dtype(dtype) and g.shape == ref_grad.shape
    assert_close(g, ref_grad, dtype, "rnnt_loss grad", stats, f"rnnt_loss grad {dtype}")
    return case, g


def fused_inputs(seed, dtype, B=4, T=6, U=4, V=9, H=8):
    rng = np.random.default_rng(seed)
    case = Case(seed, B, T, U, V)
    enc = rng.standard_normal((B, T, H))
    pred = rng.standard_normal((B, U + 1, H))
    weight = rng.standard_normal((V, H)) / np.sqrt(H)
    bias = rng.standard_normal(V) * 0.1
    dt = np_dtype(dtype)
    return case, tuple(x.astype(dt) for x in (enc, pred, weight, bias)) + (
        case.targets, case.T, case.U)


def check_transducer_loss(backend, xp, seed, dtype, *, activation="tanh", fastemit=0.0,
                          clamp=None, workspace=None, sample_wise=False, stats=None):
    """``workspace``: max_workspace_bytes (default: 6 rows per chunk, so chunks split
    samples and span several)."""
    case, args = fused_inputs(seed, dtype)
    if workspace is None:
        workspace = workspace_bytes(*args[:3], rows_per_chunk=6)
    kw = dict(activation=activation, blank=case.blank, clamp=clamp, fastemit_lambda=fastemit,
              max_workspace_bytes=workspace, sample_wise=sample_wise, reduction="sum")
    ref = cutrans.transducer_loss(*args, backend="numpy", **kw)
    out = cutrans.transducer_loss(*(to_xp(a, xp) for a in args), backend=backend, **kw)
    cd = "float64" if dtype == "float64" else "float32"
    assert_close(to_np(out.loss), ref.loss, cd, "transducer loss", stats,
                 f"transducer loss {dtype}")
    for name, g, r in zip(("enc", "pred", "weight", "bias"), out.grads, ref.grads):
        g = to_np(g, dtype)
        assert g.dtype == r.dtype, name
        assert_close(g, r, dtype, f"transducer d_{name}", stats, f"transducer grad {dtype}")
    return out


def bits(x):
    return np.ascontiguousarray(to_np(x)).tobytes()
