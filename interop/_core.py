"""Framework-free glue shared by the adapters (NumPy or CuPy arrays in, out).

Framework custom ops (``torch.library.custom_op``, ``jax.pure_callback``) can only hand
arrays from a forward to its backward, not the core's opaque contexts. So:

* two-pass ops (per-sample upstream gradient, reduction "none"): the forward returns the
  per-sample losses plus the gradient coefficients of every lattice point laid out
  *padded* as ``(B, T, U+1, coef_width)`` (2 for the standard RNN-T) -- a shape known
  from the input shapes and arguments alone, so fake / abstract evaluation needs no
  data -- and the backward rebuilds the core's context
  from the inputs and those coefficients (``_orchestrate.logits_context`` /
  ``_fused.fused_context``, the constructors the core's forwards use) and runs its backward;
* the one-pass fused op (reduction "mean"/"sum"): the forward returns the reduced loss and
  the gradients themselves; the adapter's backward scales them by the upstream scalar.

Padded <-> packed: the packed row order (sample, then t, then u) is exactly the C order of
the valid points ``t < T_b, u <= U_b`` of a ``(B, T, U+1)`` grid; ``_points`` gives their
flat indices from the device plan (no host read).
All argument checks are ``cutrans._validate``'s, as in the core. The variant and its
arguments travel as one string (``cutrans._topology.encode_variant``).
"""
from __future__ import annotations

import numpy as np

from cutrans import _fused
from cutrans import _orchestrate as orch
from cutrans import _validate as v
from cutrans import api
from cutrans._dtypes import compute_dtype
from cutrans._plan import make_plan, to_device
from cutrans._topology import Topology, decode_variant
from cutrans.backends import ACTIVATIONS, get_backend

__all__ = ["logits_forward", "logits_backward", "fused_forward", "fused_backward",
           "fused_reduced", "lattice_forward", "validate_logprob_args", "coef_width"]


def _points(xp, dplan, T: int, U1: int):
    """Flat indices (R,) into a ``(B, T, U+1)`` grid of the packed rows' points ``(b, t, u)``
    (the valid ones, ``t < T_b, u <= U_b``, in C order), from the device plan by arithmetic:
    no boolean mask, whose indexing would read its count back (a synchronisation)."""
    offsets = dplan.offsets
    r = xp.arange(dplan.rows, dtype=offsets.dtype)
    b = xp.searchsorted(offsets, r, side="right") - 1
    u1 = dplan.target_len[b].astype(offsets.dtype) + 1
    local = r - offsets[b]
    t = local // u1
    return (b * T + t) * U1 + (local - t * u1)


def _pad(xp, packed, points, grid: tuple):
    """Packed rows (R,) or (R, W) -> padded ``grid + (W,)``, zeros outside."""
    out = xp.zeros((int(np.prod(grid)),) + packed.shape[1:], dtype=packed.dtype)
    out[points] = packed
    return out.reshape(grid + packed.shape[1:])


def _pack(padded, points, grid: tuple, dtype):
    """Padded ``grid + (W,)`` -> packed rows (R,) or (R, W) in ``dtype``."""
    flat = padded.reshape((int(np.prod(grid)),) + padded.shape[len(grid):])
    return flat[points].astype(dtype, copy=False)


def _host_lengths(x) -> np.ndarray:
    return v.to_host(x).astype(np.int64)


def _topology(n_logits: int, blank, clamp, fastemit_lambda, variant: str):
    """(topology, clamp, fastemit_lambda) from an op's arguments (``variant``: the string of
    ``cutrans._topology.encode_variant``)."""
    return api.common_scalars(n_logits, blank, clamp, fastemit_lambda, decode_variant(variant))


def coef_width(n_logits: int, blank, variant: str) -> int:
    """Columns of the saved coefficients: the topology's ``width``, + 2 with TDT's omega."""
    topo = _topology(n_logits, blank, None, 0.0, variant)[0]
    return topo.width + (2 if topo.omega else 0)


def _coefs_padded(ctx, T, U1):
    """The context's coefficients, (R, W) [+ (R, 2)], as one padded (B, T, U+1, W [+ 2])."""
    xp = ctx.backend.xp
    packed = ctx.coefs if ctx.coefs2 is None else xp.concatenate([ctx.coefs, ctx.coefs2], 1)
    return _pad(xp, packed, _points(xp, ctx.dplan, T, U1), (ctx.dplan.batch, T, U1))


def _plan_and_coefs(xp, targets, t_len, u_len, coefs, topo, T, U1, cdt):
    """(plan, device plan, coefs (R, W), coefs2 (R, 2) or None) from saved padded ones."""
    plan = make_plan(_host_lengths(t_len), _host_lengths(u_len))
    dplan = to_device(plan, xp.asarray(targets), xp)  # checked by the forward: no read
    packed = _pack(coefs, _points(xp, dplan, T, U1), (dplan.batch, T, U1), cdt)
    W = topo.width
    c2 = xp.ascontiguousarray(packed[:, W:]) if topo.omega else None
    return plan, dplan, xp.ascontiguousarray(packed[:, :W]), c2


# ------------------------------------------------------------------ logits op
def logits_forward(logits, targets, logit_lengths, target_lengths, *, blank, clamp,
                   fastemit_lambda, need_grad, variant="rnnt"):
    """``(losses (B,), coefs)``, coefficients ``(B, T, U+1, coef_width)`` or None."""
    losses, ctx = api.rnnt_loss_forward(logits, targets, logit_lengths, target_lengths,
                                        blank=blank, clamp=clamp,
                                        fastemit_lambda=fastemit_lambda, need_grad=need_grad,
                                        **decode_variant(variant))
    if ctx is None:
        return losses, None
    return losses, _coefs_padded(ctx, logits.shape[1], logits.shape[2])


def logits_backward(grad_losses, logits, targets, logit_lengths, target_lengths, coefs, *,
                    blank, clamp, fastemit_lambda, variant="rnnt"):
    """dLoss/dlogits (logits' shape and dtype) from inputs + saved coefficients."""
    be = get_backend(None, logits)
    xp = be.xp
    B, T, U1, V = logits.shape
    topo, clamp, lam = _topology(V, blank, clamp, fastemit_lambda, variant)
    plan, dplan, c, c2 = _plan_and_coefs(xp, targets, logit_lengths, target_lengths, coefs,
                                         topo, T, U1, compute_dtype(logits.dtype))
    ctx = orch.logits_context(be, logits, None, plan, topo, c, c2, packed=False,
                              fastemit_lambda=lam, clamp=clamp, dplan=dplan)
    return api.rnnt_loss_backward(ctx, grad_losses)


# ------------------------------------------------------------------ fused op
def fused_forward(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *, activation,
                  blank, clamp, fastemit_lambda, max_workspace_bytes, sample_wise, need_grad,
                  allow_tf32=False, checks="host", status=None, variant="rnnt"):
    """``(losses (B,), coefs)``, coefficients ``(B, T, U+1, coef_width)`` or None."""
    losses, ctx = api.transducer_forward(
        enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation=activation,
        blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
        max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise, need_grad=need_grad,
        allow_tf32=allow_tf32, checks=checks, status=status, **decode_variant(variant))
    if ctx is None:
        return losses, None
    return losses, _coefs_padded(ctx, enc.shape[1], pred.shape[1])


def fused_backward(grad_losses, enc, pred, weight, bias, targets, enc_lengths, target_lengths,
                   coefs, *, activation, blank, clamp, fastemit_lambda, max_workspace_bytes,
                   sample_wise, needs=(True, True, True, True), allow_tf32=False,
                   variant="rnnt"):
    """``(d_enc, d_pred, d_weight, d_bias)`` from inputs + saved coefficients.

    ``needs`` flags the gradients to compute; the others come back as None.
    """
    be = get_backend(None, enc)
    xp = be.xp
    T, U1 = enc.shape[1], pred.shape[1]
    topo, clamp, lam = _topology(weight.shape[0], blank, clamp, fastemit_lambda, variant)
    plan, dplan, c, c2 = _plan_and_coefs(xp, targets, enc_lengths, target_lengths, coefs,
                                         topo, T, U1, compute_dtype(enc.dtype))
    f = _fused.FusedInputs(*(xp.ascontiguousarray(x) for x in (enc, pred, weight, bias)),
                           activation=ACTIVATIONS[activation], topo=topo, fastemit_lambda=lam,
                           clamp=clamp, tf32=bool(allow_tf32))
    ctx = _fused.fused_context(be, f, None, plan, c, c2,
                               max_workspace_bytes=max_workspace_bytes,
                               sample_wise=sample_wise, dplan=dplan)
    return tuple(_fused.backward(ctx, grad_losses, needs=tuple(needs)))


def fused_reduced(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *, activation,
                  blank, clamp, fastemit_lambda, max_workspace_bytes, sample_wise, reduction,
                  needs=(True, True, True, True), allow_tf32=False, checks="host",
                  status=None, variant="rnnt"):
    """One pass: ``(reduced loss (0-d), d_enc, d_pred, d_weight, d_bias)``, the gradients of
    the reduced loss up to ``api.reduced_grad_factors`` (None where not in ``needs``): the
    adapters' backward multiplies each by its factor with the upstream gradient."""
    losses, ctx = api.transducer_forward(
        enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation=activation,
        blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
        max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise, reduction=reduction,
        needs=needs, allow_tf32=allow_tf32, checks=checks, status=status,
        **decode_variant(variant))
    xp = get_backend(None, enc).xp
    return (xp.asarray(v.reduce_losses(losses, reduction)), *ctx.grads)


# ------------------------------------------------------------------ lattice only
def validate_logprob_args(logits, targets, logit_lengths, target_lengths, blank) -> int:
    """The checks of ``api.rnnt_loss_forward`` (padded layout); returns the blank id."""
    V = v.logits_shapes(logits, targets, logit_lengths, target_lengths)
    blank = v.normalize_blank(blank, V)
    v.check_values("logit_lengths", logit_lengths, target_lengths, targets, logits.shape[1],
                   Topology(blanks=(blank,)), V)
    return blank


LOG_PROBS_NAN = "logits: expected log-probabilities without NaN or +inf"


def lattice_forward(lp_blank, lp_emit, row_sums, logit_lengths, target_lengths, *,
                    fastemit_lambda, need_grad):
    """RNN-T recursion on given log-probabilities (padded ``(B, T, U+1)``, compute dtype).

    ``lp_emit`` must be ``-inf`` at ``u = U_b``. ``row_sums`` ``(B, T, U+1)``: each
    point's log-probabilities summed over the vocabulary -- NaN or +inf at a lattice point
    raises (``-inf``: masked labels, allowed; the padding is never read); so does a sample
    without any alignment. Both checks are read once, after the recursion. Returns
    ``(losses, coef_blank, coef_emit)`` (coefficients padded, or None). Used for
    ``fused_log_softmax=False``.
    """
    be = get_backend(None, lp_blank)
    xp = be.xp
    B, T, U1 = lp_blank.shape
    plan = make_plan(_host_lengths(logit_lengths), _host_lengths(target_lengths))
    dplan = to_device(plan, xp.zeros((B, 1), dtype=xp.int32), xp)
    points, grid = _points(xp, dplan, T, U1), (B, T, U1)
    lpb = _pack(lp_blank, points, grid, lp_blank.dtype)
    lpe = _pack(lp_emit, points, grid, lp_blank.dtype)
    alpha = xp.empty_like(lpb)
    beta = xp.empty_like(lpb) if need_grad else alpha
    ll = xp.empty(B, dtype=lpb.dtype)
    values = xp.stack([lpb, lpe], axis=1)
    sums = _pack(row_sums, points, grid, row_sums.dtype)
    bad_sums = xp.isnan(sums).any() | xp.isposinf(sums).any()
    be.lattice(dplan, Topology(), 0, B, 0, values, alpha, beta, ll, values, need_grad)
    bad_sums, bad_ll = v.host_read(xp.stack([bad_sums, ~xp.isfinite(ll).all()]))  # one read
    if bad_sums:
        raise ValueError(LOG_PROBS_NAN)
    if bad_ll:
        v.check_log_likelihood(ll, xp)  # names the sample
    losses = _fused.losses_from(ll, fastemit_lambda)
    if not need_grad:
        return losses, None, None
    return losses, _pad(xp, values[:, 0], points, grid), _pad(xp, values[:, 1], points, grid)
