"""The one schedule of both operations, written against ``backends.base.Backend``.

Logits op:   row_stats over all rows -> lattice -> (backward) row_grad.
Fused op:    forward, per row chunk: joint_forward (h) -> GEMM z = h W^T + bias ->
             row_stats; then the lattice, one launch per group of consecutive samples
             whose alpha/beta workspaces fit the budget. Only 2 floats per row (the
             gradient coefficients, written over the log-probabilities) and the
             log-likelihoods are kept.
             backward, per chunk: recompute h and z (kept from the forward instead when
             everything fit in one chunk) -> row_grad in place over z ->
             dW += g^T h, dbias += sum g, dh = g W -> joint_backward (accumulates into
             d_enc, d_pred in chunk order: deterministic).
The same code runs with NumPy, CuPy and the CPU-emulated kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _validate as v
from ._dtypes import compute_dtype
from ._plan import DevicePlan, RowPlan, rows_per_chunk, subset, to_device
from .backends.base import RowLayout


@dataclass
class LossContext:
    """What a forward keeps for its backward: O(B + rows) arrays plus input references.

    ``coef_blank``/``coef_emit`` (R,) are the gradient coefficients of ``Backend.lattice``.
    """

    backend: Any
    plan: RowPlan
    dplan: DevicePlan
    coef_blank: Any
    coef_emit: Any
    blank: int
    fastemit_lambda: float
    clamp: float


@dataclass
class LogitsContext(LossContext):
    logits: Any = None  # contiguous (B, T, U+1, V) or (R, V)
    packed: bool = False


@dataclass
class FusedContext(LossContext):
    enc: Any = None  # (B, T, H) storage dtype
    pred: Any = None  # (B, U+1, H) storage dtype
    weight: Any = None  # (V, H) compute dtype
    bias: Any = None  # (V,) compute dtype
    activation: int = 0
    chunks: list = field(default_factory=list)  # [(row0, n_rows)]
    n_max: int = 0  # rows of the largest chunk
    out_dtypes: tuple = ()  # dtypes of enc, pred, weight, bias
    resident: tuple | None = None  # (h, z) of a single chunk kept from the forward


def _lattice(backend, plan, dplan, lp_blank, lp_emit, need_grad, max_rows=None):
    """Log-likelihoods (B,); the coefficients overwrite ``lp_blank``/``lp_emit`` in place.

    The alpha/beta workspaces hold at most ``max_rows`` rows (or one sample's rows, if
    larger): the lattice runs per group of consecutive samples.
    """
    xp = backend.xp
    groups = plan.sample_groups(max_rows)
    n = max(int(plan.offsets[b1] - plan.offsets[b0]) for b0, b1 in groups)
    alpha = xp.empty(n, dtype=lp_blank.dtype)
    beta = xp.empty_like(alpha) if need_grad else alpha
    log_like = xp.empty(dplan.batch, dtype=lp_blank.dtype)
    for b0, b1 in groups:
        sub = dplan if len(groups) == 1 else subset(plan, dplan, b0, b1, xp)
        r0, r1 = int(plan.offsets[b0]), int(plan.offsets[b1])
        lpb, lpe = lp_blank[r0:r1], lp_emit[r0:r1]
        backend.lattice(sub, lpb, lpe, alpha[:r1 - r0], beta[:r1 - r0], log_like[b0:b1],
                        lpb, lpe, need_grad)
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
    v.check_log_probs(lp_blank, xp)  # NaN/inf in the logits, in O(rows) memory
    log_like = _lattice(backend, plan, dplan, lp_blank, lp_emit, need_grad)
    v.check_log_likelihood(log_like, xp)
    ctx = LogitsContext(backend, plan, dplan, lp_blank, lp_emit, blank, fastemit_lambda, clamp,
                        logits=logits, packed=packed) if need_grad else None
    return _losses(log_like, fastemit_lambda), ctx


def logits_context(backend, logits, targets, plan: RowPlan, coef_blank, coef_emit, *,
                   packed: bool, blank: int, fastemit_lambda: float, clamp: float,
                   dplan: DevicePlan | None = None) -> LogitsContext:
    """Rebuild a backward context from inputs and saved coefficients (for adapters)."""
    dplan = dplan or to_device(plan, targets, backend.xp)
    return LogitsContext(backend, plan, dplan, coef_blank, coef_emit, blank, fastemit_lambda,
                         clamp, logits=backend.xp.ascontiguousarray(logits), packed=packed)


def logits_backward(ctx: LogitsContext, grad_losses):
    """dLoss/dlogits (logits' shape and dtype) for upstream gradients ``grad_losses`` (B,)."""
    backend, xp = ctx.backend, ctx.backend.xp
    logits, packed = ctx.logits, ctx.packed
    scale = v.upstream_gradient(grad_losses, ctx.dplan.batch, xp, ctx.coef_blank.dtype)
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


def _joint_logits(ctx: "FusedContext", row0, n, h, z):
    """h = act(enc[b,t] + pred[b,u]) and z = h W^T + bias for one chunk."""
    ctx.backend.joint_forward(ctx.enc, ctx.pred, ctx.dplan, row0, n, ctx.activation, h)
    ctx.backend.xp.matmul(h, ctx.weight.T, out=z)
    z += ctx.bias


def fused_context(backend, enc, pred, weight, bias, targets, plan: RowPlan, coef_blank,
                  coef_emit, *, activation: int, blank: int, fastemit_lambda: float,
                  clamp: float, max_workspace_bytes: int, sample_wise: bool = False,
                  dplan: DevicePlan | None = None) -> FusedContext:
    """The fused op's context: chunking under the budget, weights in the compute dtype.

    Used by the forward (with coefficient arrays still to fill) and by adapters that
    rebuild a backward context from inputs and saved coefficients.
    """
    xp = backend.xp
    cdt = compute_dtype(enc.dtype)
    H, V = enc.shape[-1], weight.shape[0]
    n_max = fused_chunk_rows(plan, H, V, np.dtype(cdt).itemsize, max_workspace_bytes)
    chunks = plan.chunks(n_max, sample_wise)
    return FusedContext(
        backend, plan, dplan or to_device(plan, targets, xp), coef_blank, coef_emit, blank,
        fastemit_lambda, clamp, enc=xp.ascontiguousarray(enc), pred=xp.ascontiguousarray(pred),
        weight=xp.ascontiguousarray(weight).astype(cdt, copy=False),
        bias=xp.ascontiguousarray(bias).astype(cdt, copy=False), activation=activation,
        chunks=chunks, n_max=max(n for _, n in chunks),
        out_dtypes=(enc.dtype, pred.dtype, weight.dtype, bias.dtype))


def fused_forward(backend, enc, pred, weight, bias, targets, plan: RowPlan, *, activation: int,
                  blank: int, fastemit_lambda: float, clamp: float, need_grad: bool,
                  max_workspace_bytes: int, sample_wise: bool = False):
    """Per-sample losses (B,) of the joint network + RNN-T, and the backward context."""
    xp = backend.xp
    cdt = compute_dtype(enc.dtype)
    lp_blank = xp.empty(plan.rows, dtype=cdt)
    lp_emit = xp.empty(plan.rows, dtype=cdt)
    ctx = fused_context(backend, enc, pred, weight, bias, targets, plan, lp_blank, lp_emit,
                        activation=activation, blank=blank, fastemit_lambda=fastemit_lambda,
                        clamp=clamp, max_workspace_bytes=max_workspace_bytes,
                        sample_wise=sample_wise)
    H, V = enc.shape[-1], weight.shape[0]
    h_ws = xp.empty((ctx.n_max, H), dtype=cdt)
    z_ws = xp.empty((ctx.n_max, V), dtype=cdt)
    layout = RowLayout(packed=True, ld=V)
    for row0, n in ctx.chunks:
        _joint_logits(ctx, row0, n, h_ws[:n], z_ws[:n])
        backend.row_stats(z_ws[:n], layout, row0, n, ctx.dplan, blank, lp_blank, lp_emit)
    # a single chunk stays resident (within the budget) so the backward need not recompute it
    ctx.resident = (h_ws, z_ws) if need_grad and len(ctx.chunks) == 1 else None
    del h_ws, z_ws
    # alpha/beta workspaces within the budget too (2 floats per row, per sample group)
    lattice_rows = max_workspace_bytes // (2 * np.dtype(cdt).itemsize)
    log_like = _lattice(backend, plan, ctx.dplan, lp_blank, lp_emit, need_grad, lattice_rows)
    return _losses(log_like, fastemit_lambda), (ctx if need_grad else None)


def fused_backward(ctx: FusedContext, grad_losses, needs=(True, True, True, True)):
    """(d_enc, d_pred, d_weight, d_bias) for upstream per-sample gradients (B,).

    ``needs``: which of the four to compute; the others come back as None (no dW GEMM
    without weight, no dh GEMM / joint backward without enc and pred).
    """
    backend, xp = ctx.backend, ctx.backend.xp
    cdt = ctx.coef_blank.dtype
    H, V = ctx.enc.shape[-1], ctx.weight.shape[0]
    need_enc, need_pred, need_w, need_b = map(bool, needs)
    need_h = need_enc or need_pred
    scale = v.upstream_gradient(grad_losses, ctx.dplan.batch, xp, cdt)
    d_enc = xp.zeros(ctx.enc.shape, dtype=cdt) if need_h else None
    d_pred = xp.zeros(ctx.pred.shape, dtype=cdt) if need_h else None
    d_w = xp.zeros((V, H), dtype=cdt) if need_w else None
    d_b = xp.zeros(V, dtype=cdt) if need_b else None
    resident, ctx.resident = ctx.resident, None  # z becomes the gradient: recompute next time
    h_ws, z_ws = resident or (xp.empty((ctx.n_max, H), dtype=cdt),
                              xp.empty((ctx.n_max, V), dtype=cdt))
    dh_ws = xp.empty((ctx.n_max, H), dtype=cdt) if need_h else None
    dw_ws = xp.empty((V, H), dtype=cdt) if need_w else None
    layout = RowLayout(packed=True, ld=V)
    for row0, n in ctx.chunks:
        h, z = h_ws[:n], z_ws[:n]
        if resident is None:
            _joint_logits(ctx, row0, n, h, z)
        backend.row_grad(z, z, layout, row0, n, ctx.dplan, ctx.blank, ctx.coef_blank,
                         ctx.coef_emit, scale, ctx.fastemit_lambda, ctx.clamp)
        if need_w:
            xp.matmul(z.T, h, out=dw_ws)
            d_w += dw_ws
        if need_b:
            d_b += z.sum(axis=0)
        if need_h:
            xp.matmul(z, ctx.weight, out=dh_ws[:n])
            backend.joint_backward(dh_ws[:n], h, ctx.dplan, row0, n, ctx.activation, d_enc,
                                   d_pred)
    grads = (d_enc if need_enc else None, d_pred if need_pred else None, d_w, d_b)
    return tuple(None if g is None else g.astype(dt, copy=False)
                 for g, dt in zip(grads, ctx.out_dtypes))
