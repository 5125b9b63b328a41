"""The one schedule of both operations, written against ``backends.base.Backend``.

Logits op:   row_stats over all rows -> lattice -> (backward) row_grad.
Fused op:    forward, per row chunk: joint_forward (h) -> GEMM z = h W^T + bias ->
             row_stats; then one lattice launch for all samples. Only 2 floats per row
             (the gradient coefficients) and log-likelihoods are kept.
             backward, per chunk: recompute h and z (kept from the forward instead when
             everything fit in one chunk) -> row_grad in place over z ->
             dW += g^T h, dbias += sum g, dh = g W -> joint_backward (accumulates into
             d_enc, d_pred in chunk order: deterministic).
The same code runs with NumPy, CuPy and the CPU-emulated kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._dtypes import compute_dtype
from ._plan import DevicePlan, RowPlan, rows_per_chunk, to_device
from .backends.base import RowLayout


@dataclass
class LossContext:
    """What a forward keeps for its backward (all O(B + rows) except input references)."""

    backend: Any
    plan: RowPlan
    dplan: DevicePlan
    coef_blank: Any  # (R,) compute dtype
    coef_emit: Any  # (R,) compute dtype
    blank: int
    fastemit_lambda: float
    clamp: float
    inputs: tuple  # the arrays the backward re-reads
    extra: dict


def _lattice(backend, dplan, lp_blank, lp_emit, need_grad):
    xp = backend.xp
    alpha = xp.empty_like(lp_blank)
    beta = xp.empty_like(lp_blank) if need_grad else alpha
    log_like = xp.empty(dplan.batch, dtype=lp_blank.dtype)
    # coefficients overwrite the log-probabilities in place (see Backend.lattice)
    backend.lattice(dplan, lp_blank, lp_emit, alpha, beta, log_like, lp_blank, lp_emit, need_grad)
    return log_like


def _losses(log_like, fastemit_lambda):
    # NeMo / warprnnt-numba convention: the reported loss is (1 + lambda) * (-LL)
    return log_like * (-(1.0 + fastemit_lambda))


# ------------------------------------------------------------------ logits op
def logits_layout(logits, packed: bool) -> RowLayout:
    """Addressing of a contiguous logits array: packed (R, V) or padded (B, T, U+1, V)."""
    V = logits.shape[-1]
    if packed:
        return RowLayout(packed=True, ld=V)
    _, T, U1, _ = logits.shape
    return RowLayout(packed=False, sb=T * U1 * V, st=U1 * V, su=V)


def logits_forward(backend, logits, targets, plan: RowPlan, *, packed: bool, blank: int,
                   fastemit_lambda: float, clamp: float, need_grad: bool):
    """Per-sample losses (B,) and the context for ``logits_backward``."""
    xp = backend.xp
    cdt = compute_dtype(logits.dtype)
    dplan = to_device(plan, targets, xp)
    layout = logits_layout(logits, packed)
    lp_blank = xp.empty(dplan.rows, dtype=cdt)
    lp_emit = xp.empty(dplan.rows, dtype=cdt)
    backend.row_stats(logits, layout, 0, dplan.rows, dplan, blank, lp_blank, lp_emit)
    log_like = _lattice(backend, dplan, lp_blank, lp_emit, need_grad)
    ctx = LossContext(backend, plan, dplan, lp_blank, lp_emit, blank, fastemit_lambda, clamp,
                      (logits,), {"packed": packed}) if need_grad else None
    return _losses(log_like, fastemit_lambda), ctx


def logits_backward(ctx: LossContext, grad_losses):
    """dLoss/dlogits (logits' shape and dtype) for upstream gradients ``grad_losses`` (B,)."""
    backend, xp = ctx.backend, ctx.backend.xp
    (logits,) = ctx.inputs
    scale = xp.asarray(grad_losses, dtype=ctx.coef_blank.dtype)
    packed = ctx.extra["packed"]
    grad = xp.empty_like(logits) if packed else xp.zeros_like(logits)
    backend.row_grad(logits, grad, logits_layout(logits, packed), 0, ctx.dplan.rows, ctx.dplan,
                     ctx.blank, ctx.coef_blank, ctx.coef_emit, scale, ctx.fastemit_lambda,
                     ctx.clamp)
    return grad


# ------------------------------------------------------------------ fused op
def fused_chunk_rows(plan: RowPlan, hidden: int, vocab: int, itemsize: int, budget: int) -> int:
    """Rows per chunk: workspace h, dh (H each) and z (V) per row + a (V, H) dW buffer."""
    return rows_per_chunk(budget, (2 * hidden + vocab) * itemsize, vocab * hidden * itemsize,
                          plan.rows)


def _joint_logits(backend, enc, pred, w, bias, dplan, row0, n, activation, h, z):
    backend.joint_forward(enc, pred, dplan, row0, n, activation, h)
    backend.xp.matmul(h, w.T, out=z)
    z += bias


def fused_forward(backend, enc, pred, weight, bias, targets, plan: RowPlan, *, activation: int,
                  blank: int, fastemit_lambda: float, clamp: float, need_grad: bool,
                  max_workspace_bytes: int, sample_wise: bool = False):
    """Per-sample losses (B,) of the joint network + RNN-T, and the backward context."""
    xp = backend.xp
    cdt = compute_dtype(enc.dtype)
    H, V = enc.shape[-1], weight.shape[0]
    n_max = fused_chunk_rows(plan, H, V, np.dtype(cdt).itemsize, max_workspace_bytes)
    chunks = plan.chunks(n_max, sample_wise)
    n_max = max(n for _, n in chunks)
    dplan = to_device(plan, targets, xp)
    w, b = weight.astype(cdt, copy=False), bias.astype(cdt, copy=False)
    h_ws = xp.empty((n_max, H), dtype=cdt)
    z_ws = xp.empty((n_max, V), dtype=cdt)
    lp_blank = xp.empty(dplan.rows, dtype=cdt)
    lp_emit = xp.empty(dplan.rows, dtype=cdt)
    layout = RowLayout(packed=True, ld=V)
    for row0, n in chunks:
        _joint_logits(backend, enc, pred, w, b, dplan, row0, n, activation, h_ws[:n], z_ws[:n])
        backend.row_stats(z_ws[:n], layout, row0, n, dplan, blank, lp_blank, lp_emit)
    # a single chunk stays resident (within the budget) so the backward need not recompute it
    resident = (h_ws, z_ws) if need_grad and len(chunks) == 1 else None
    del h_ws, z_ws
    log_like = _lattice(backend, dplan, lp_blank, lp_emit, need_grad)
    ctx = None
    if need_grad:
        ctx = LossContext(backend, plan, dplan, lp_blank, lp_emit, blank, fastemit_lambda, clamp,
                          (enc, pred, w, b), {"activation": activation, "chunks": chunks,
                                              "n_max": n_max, "resident": resident,
                                              "dtypes": (enc.dtype, pred.dtype,
                                                         weight.dtype, bias.dtype)})
    return _losses(log_like, fastemit_lambda), ctx


def fused_backward(ctx: LossContext, grad_losses):
    """(d_enc, d_pred, d_weight, d_bias) for upstream per-sample gradients (B,)."""
    backend, xp = ctx.backend, ctx.backend.xp
    enc, pred, w, b = ctx.inputs
    cdt = ctx.coef_blank.dtype
    act, n_max = ctx.extra["activation"], ctx.extra["n_max"]
    H, V = enc.shape[-1], w.shape[0]
    scale = xp.asarray(grad_losses, dtype=cdt)
    d_enc = xp.zeros(enc.shape, dtype=cdt)
    d_pred = xp.zeros(pred.shape, dtype=cdt)
    d_w = xp.zeros((V, H), dtype=cdt)
    d_b = xp.zeros(V, dtype=cdt)
    resident = ctx.extra["resident"]
    # the resident z is overwritten by the gradient: a second backward must recompute it
    ctx.extra["resident"] = None
    h_ws, z_ws = resident or (xp.empty((n_max, H), dtype=cdt), xp.empty((n_max, V), dtype=cdt))
    dh_ws = xp.empty((n_max, H), dtype=cdt)
    dw_ws = xp.empty((V, H), dtype=cdt)
    layout = RowLayout(packed=True, ld=V)
    for row0, n in ctx.extra["chunks"]:
        h, dh, z = h_ws[:n], dh_ws[:n], z_ws[:n]
        if resident is None:
            _joint_logits(backend, enc, pred, w, b, ctx.dplan, row0, n, act, h, z)
        backend.row_grad(z, z, layout, row0, n, ctx.dplan, ctx.blank, ctx.coef_blank,
                         ctx.coef_emit, scale, ctx.fastemit_lambda, ctx.clamp)
        xp.matmul(z.T, h, out=dw_ws)
        d_w += dw_ws
        d_b += z.sum(axis=0)
        xp.matmul(z, w, out=dh)
        backend.joint_backward(dh, h, ctx.dplan, row0, n, act, d_enc, d_pred)
    de, dp, dwt, dbt = ctx.extra["dtypes"]
    return (d_enc.astype(de, copy=False), d_pred.astype(dp, copy=False),
            d_w.astype(dwt, copy=False), d_b.astype(dbt, copy=False))
