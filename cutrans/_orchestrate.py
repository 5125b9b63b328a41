"""The loss-on-logits schedule, written against ``backends.base.Backend``.

Forward: ``row_stats`` over all rows (one read of every logit; keeps the per-row
logsumexps) -> ``lattice`` (alpha, beta, the gradient coefficients, written over the
per-row values). Backward: ``row_grad`` (one read of every logit, thanks to the kept
logsumexps) scaled by the per-sample upstream gradient. The same code runs with NumPy,
CuPy and the CPU-emulated kernels, for every topology (``cutrans._topology``). The fused
op's schedule is ``_fused``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _status
from . import _validate as v
from ._dtypes import compute_dtype
from ._fused import losses_from, run_lattices
from ._plan import DevicePlan, RowPlan, to_device
from ._topology import Topology
from .backends.base import RowLayout


@dataclass
class LogitsContext:
    """What the forward keeps for its backward: a few floats per row plus the logits.

    ``coefs`` (R, W): gradient coefficients (``Backend.lattice``); ``coefs2`` (R, 2): those
    of TDT's mixed-in RNN-T (omega > 0) or None; ``lse`` (R, G) the rows' logsumexps, or
    None (recomputed by the backward).
    """

    backend: Any
    plan: RowPlan
    dplan: DevicePlan
    topo: Topology
    coefs: Any
    coefs2: Any
    lse: Any
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


def logits_forward(backend, logits, targets, plan: RowPlan, topo: Topology, *, packed: bool,
                   fastemit_lambda: float, clamp: float, need_grad: bool, status=None,
                   log_likes=None):
    """Per-sample losses (B,) and the context for ``logits_backward``.

    ``status``: the checks as flags ORed into this device status word, no read (the
    labels by a kernel, ``NON_FINITE_ROWS``, ``NON_FINITE``; ``api._run_checked``) instead
    of host checks that raise; ``log_likes``: ``(log_like, log_like2)`` (B,) arrays to fill
    (the second for TDT with omega, else None), or None."""
    xp = backend.xp
    cdt = compute_dtype(logits.dtype)
    dplan = to_device(plan, targets, xp)
    if status is not None:
        backend.check_targets(dplan, topo.vocab(logits.shape[-1]), topo, status)
    R = dplan.rows
    values = xp.empty((R, topo.width), dtype=cdt)
    lse = xp.empty((R, topo.lse_width), dtype=cdt) if need_grad else None
    backend.row_stats(logits, logits_layout(logits, packed), 0, R, dplan, topo, values, 0, lse)
    if status is None:
        v.check_log_probs(values[:, 0], xp)  # NaN/inf in the logits, in O(rows) memory
    else:
        _status.flag_non_finite(status, values[:, 0], xp, _status.NON_FINITE_ROWS)
    alpha = xp.empty(R, dtype=cdt)
    beta = xp.empty_like(alpha) if need_grad else alpha
    log_like, coefs2, log_like2 = run_lattices(
        backend, topo, dplan, 0, dplan.batch, 0, values, alpha, beta, need_grad,
        xp.empty((R, 2), dtype=cdt) if topo.omega else None, *(log_likes or ()))
    del alpha, beta
    for ll in (log_like, log_like2):
        if ll is None:
            continue
        if status is None:
            v.check_log_likelihood(ll, xp)
        else:
            _status.flag_non_finite(status, ll, xp)
    ctx = LogitsContext(backend, plan, dplan, topo, values, coefs2, lse, fastemit_lambda,
                        clamp, logits=logits, packed=packed) if need_grad else None
    return losses_from(log_like, fastemit_lambda, topo, log_like2), ctx


def logits_context(backend, logits, targets, plan: RowPlan, topo: Topology, coefs, coefs2,
                   *, packed: bool, fastemit_lambda: float, clamp: float,
                   dplan: DevicePlan | None = None) -> LogitsContext:
    """Rebuild a backward context from inputs and saved coefficients (for adapters)."""
    dplan = dplan or to_device(plan, targets, backend.xp)
    return LogitsContext(backend, plan, dplan, topo, coefs, coefs2, None, fastemit_lambda,
                         clamp, logits=backend.xp.ascontiguousarray(logits), packed=packed)


def logits_backward(ctx: LogitsContext, grad_losses):
    """dLoss/dlogits (logits' shape and dtype) for upstream gradients ``grad_losses`` (B,)."""
    backend, xp = ctx.backend, ctx.backend.xp
    logits, packed = ctx.logits, ctx.packed
    scale = v.upstream_gradient(grad_losses, ctx.dplan.batch, xp, ctx.coefs.dtype)
    grad = xp.empty_like(logits) if packed else xp.zeros_like(logits)
    backend.row_grad(logits, grad, logits_layout(logits, packed), 0, ctx.dplan.rows, ctx.dplan,
                     ctx.topo, ctx.coefs, scale, ctx.fastemit_lambda, ctx.clamp, 0, ctx.lse,
                     ctx.coefs2)
    return grad
