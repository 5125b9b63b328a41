"""The loss-on-logits schedule, written against ``backends.base.Backend``.

Forward: ``row_stats`` over all rows (one read of every logit; keeps the per-row
logsumexp) -> ``lattice`` (alpha, beta, the gradient coefficients, written over the
log-probabilities). Backward: ``row_grad`` (one read of every logit, thanks to the kept
logsumexp) scaled by the per-sample upstream gradient. The same code runs with NumPy,
CuPy and the CPU-emulated kernels. The fused op's schedule is ``_fused``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _validate as v
from ._dtypes import compute_dtype
from ._fused import losses_from
from ._plan import DevicePlan, RowPlan, to_device
from .backends.base import RowLayout


@dataclass
class LogitsContext:
    """What the forward keeps for its backward: 3 floats per row plus the logits.

    ``coef_blank``/``coef_emit`` (R,): gradient coefficients (``Backend.lattice``);
    ``lse`` (R,) the rows' logsumexp, or None (recomputed by the backward).
    """

    backend: Any
    plan: RowPlan
    dplan: DevicePlan
    coef_blank: Any
    coef_emit: Any
    lse: Any
    blank: int
    fastemit_lambda: float
    clamp: float
    logits: Any = None  # contiguous (B, T, U+1, V) or (R, V)
    packed: bool = False
    io: Any = None  # the caller's array boundary (cutrans._arrays), set by the API


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
    R = dplan.rows
    lp_blank, lp_emit = xp.empty(R, dtype=cdt), xp.empty(R, dtype=cdt)
    lse = xp.empty(R, dtype=cdt) if need_grad else None
    backend.row_stats(logits, logits_layout(logits, packed), 0, R, dplan, blank, lp_blank,
                      lp_emit, 0, lse)
    v.check_log_probs(lp_blank, xp)  # NaN/inf in the logits, in O(rows) memory
    alpha = xp.empty(R, dtype=cdt)
    beta = xp.empty_like(alpha) if need_grad else alpha
    log_like = xp.empty(dplan.batch, dtype=cdt)
    backend.lattice(dplan, 0, dplan.batch, 0, lp_blank, lp_emit, alpha, beta, log_like,
                    lp_blank, lp_emit, need_grad)
    del alpha, beta
    v.check_log_likelihood(log_like, xp)
    ctx = LogitsContext(backend, plan, dplan, lp_blank, lp_emit, lse, blank, fastemit_lambda,
                        clamp, logits=logits, packed=packed) if need_grad else None
    return losses_from(log_like, fastemit_lambda), ctx


def logits_context(backend, logits, targets, plan: RowPlan, coef_blank, coef_emit, *,
                   packed: bool, blank: int, fastemit_lambda: float, clamp: float,
                   dplan: DevicePlan | None = None) -> LogitsContext:
    """Rebuild a backward context from inputs and saved coefficients (for adapters)."""
    dplan = dplan or to_device(plan, targets, backend.xp)
    return LogitsContext(backend, plan, dplan, coef_blank, coef_emit, None, blank,
                         fastemit_lambda, clamp, logits=backend.xp.ascontiguousarray(logits),
                         packed=packed)


def logits_backward(ctx: LogitsContext, grad_losses):
    """dLoss/dlogits (logits' shape and dtype) for upstream gradients ``grad_losses`` (B,)."""
    backend, xp = ctx.backend, ctx.backend.xp
    logits, packed = ctx.logits, ctx.packed
    scale = v.upstream_gradient(grad_losses, ctx.dplan.batch, xp, ctx.coef_blank.dtype)
    grad = xp.empty_like(logits) if packed else xp.zeros_like(logits)
    backend.row_grad(logits, grad, logits_layout(logits, packed), 0, ctx.dplan.rows, ctx.dplan,
                     ctx.blank, ctx.coef_blank, ctx.coef_emit, scale, ctx.fastemit_lambda,
                     ctx.clamp, 0, ctx.lse)
    return grad
