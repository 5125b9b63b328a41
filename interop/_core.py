"""Framework-free glue shared by the adapters (NumPy or CuPy arrays in, out).

Framework custom ops (``torch.library.custom_op``, ``jax.pure_callback``) can only hand
arrays from a forward to its backward, not the core's opaque contexts. So:

* two-pass ops (per-sample upstream gradient, reduction "none"): the forward returns the
  per-sample losses plus the two gradient coefficients (``coef_blank``, ``coef_emit``)
  laid out *padded* as ``(B, T, U+1)`` -- a shape known from the input shapes alone, so
  fake / abstract evaluation needs no data -- and the backward rebuilds the core's context
  from the inputs and those coefficients (``_orchestrate.logits_context`` /
  ``_fused.fused_context``, the constructors the core's forwards use) and runs its backward;
* the one-pass fused op (reduction "mean"/"sum"): the forward returns the reduced loss and
  the gradients themselves; the adapter's backward scales them by the upstream scalar.

Padded <-> packed is a boolean mask: the packed row order (sample, then t, then u) is
exactly the C order of the valid points ``t < T_b, u <= U_b`` of a ``(B, T, U+1)`` grid.
All argument checks are ``cutrans._validate``'s, as in the core.
"""
from __future__ import annotations

import numpy as np

from cutrans import _fused
from cutrans import _orchestrate as orch
from cutrans import _validate as v
from cutrans import api
from cutrans._dtypes import compute_dtype
from cutrans._plan import make_plan, to_device
from cutrans.backends import ACTIVATIONS, get_backend

__all__ = ["logits_forward", "logits_backward", "fused_forward", "fused_backward",
           "fused_reduced", "lattice_forward", "validate_logprob_args"]


def _mask(xp, t_len, u_len, T: int, U1: int):
    t = xp.arange(T).reshape(1, T, 1)
    u = xp.arange(U1).reshape(1, 1, U1)
    return (t < t_len.reshape(-1, 1, 1)) & (u <= u_len.reshape(-1, 1, 1))


def _pad(xp, packed, mask):
    out = xp.zeros(mask.shape, dtype=packed.dtype)
    out[mask] = packed
    return out


def _pack(padded, mask, dtype):
    return padded[mask].astype(dtype, copy=False)


def _host_lengths(x) -> np.ndarray:
    return v.to_host(x).astype(np.int64)


def _coefs_padded(ctx, T, U1):
    xp = ctx.backend.xp
    mask = _mask(xp, ctx.dplan.logit_len, ctx.dplan.target_len, T, U1)
    return _pad(xp, ctx.coef_blank, mask), _pad(xp, ctx.coef_emit, mask)


def _plan_and_coefs(xp, targets, t_len, u_len, cb, ce, T, U1, cdt):
    plan = make_plan(_host_lengths(t_len), _host_lengths(u_len))
    dplan = to_device(plan, xp.asarray(v.to_host(targets)), xp)
    mask = _mask(xp, dplan.logit_len, dplan.target_len, T, U1)
    return plan, dplan, _pack(cb, mask, cdt), _pack(ce, mask, cdt)


# ------------------------------------------------------------------ logits op
def logits_forward(logits, targets, logit_lengths, target_lengths, *, blank, clamp,
                   fastemit_lambda, need_grad):
    """``(losses (B,), coef_blank, coef_emit)``, coefficients ``(B, T, U+1)`` or None."""
    losses, ctx = api.rnnt_loss_forward(logits, targets, logit_lengths, target_lengths,
                                        blank=blank, clamp=clamp,
                                        fastemit_lambda=fastemit_lambda, need_grad=need_grad)
    if ctx is None:
        return losses, None, None
    return (losses, *_coefs_padded(ctx, logits.shape[1], logits.shape[2]))


def logits_backward(grad_losses, logits, targets, logit_lengths, target_lengths, coef_blank,
                    coef_emit, *, blank, clamp, fastemit_lambda):
    """dLoss/dlogits (logits' shape and dtype) from inputs + saved coefficients."""
    be = get_backend(None, logits)
    xp = be.xp
    B, T, U1, V = logits.shape
    cdt = compute_dtype(logits.dtype)
    plan, dplan, cb, ce = _plan_and_coefs(xp, targets, logit_lengths, target_lengths,
                                          coef_blank, coef_emit, T, U1, cdt)
    ctx = orch.logits_context(be, logits, None, plan, cb, ce, packed=False,
                              blank=v.normalize_blank(blank, V),
                              fastemit_lambda=float(fastemit_lambda),
                              clamp=v.normalize_clamp(clamp), dplan=dplan)
    return api.rnnt_loss_backward(ctx, grad_losses)


# ------------------------------------------------------------------ fused op
def fused_forward(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *, activation,
                  blank, clamp, fastemit_lambda, max_workspace_bytes, sample_wise, need_grad,
                  allow_tf32=False, checks="host", status=None):
    """``(losses (B,), coef_blank, coef_emit)``, coefficients ``(B, T, U+1)`` or None."""
    losses, ctx = api.transducer_forward(
        enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation=activation,
        blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
        max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise, need_grad=need_grad,
        allow_tf32=allow_tf32, checks=checks, status=status)
    if ctx is None:
        return losses, None, None
    return (losses, *_coefs_padded(ctx, enc.shape[1], pred.shape[1]))


def fused_backward(grad_losses, enc, pred, weight, bias, targets, enc_lengths, target_lengths,
                   coef_blank, coef_emit, *, activation, blank, clamp, fastemit_lambda,
                   max_workspace_bytes, sample_wise, needs=(True, True, True, True),
                   allow_tf32=False):
    """``(d_enc, d_pred, d_weight, d_bias)`` from inputs + saved coefficients.

    ``needs`` flags the gradients to compute; the others come back as None.
    """
    be = get_backend(None, enc)
    xp = be.xp
    B, T, H = enc.shape
    U1, V = pred.shape[1], weight.shape[0]
    cdt = compute_dtype(enc.dtype)
    plan, dplan, cb, ce = _plan_and_coefs(xp, targets, enc_lengths, target_lengths,
                                          coef_blank, coef_emit, T, U1, cdt)
    f = _fused.FusedInputs(*(xp.ascontiguousarray(x) for x in (enc, pred, weight, bias)),
                           activation=ACTIVATIONS[activation],
                           blank=v.normalize_blank(blank, V),
                           fastemit_lambda=float(fastemit_lambda),
                           clamp=v.normalize_clamp(clamp), tf32=bool(allow_tf32))
    ctx = _fused.fused_context(be, f, None, plan, cb, ce,
                               max_workspace_bytes=max_workspace_bytes,
                               sample_wise=sample_wise, dplan=dplan)
    return tuple(_fused.backward(ctx, grad_losses, needs=tuple(needs)))


def fused_reduced(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *, activation,
                  blank, clamp, fastemit_lambda, max_workspace_bytes, sample_wise, reduction,
                  needs=(True, True, True, True), allow_tf32=False, checks="host",
                  status=None):
    """One pass: ``(reduced loss (0-d), d_enc, d_pred, d_weight, d_bias)``, the gradients of
    the reduced loss (None where not in ``needs``)."""
    losses, ctx = api.transducer_forward(
        enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation=activation,
        blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
        max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise, reduction=reduction,
        needs=needs, allow_tf32=allow_tf32, checks=checks, status=status)
    xp = get_backend(None, enc).xp
    return (xp.asarray(v.reduce_losses(losses, reduction)), *ctx.grads)


# ------------------------------------------------------------------ lattice only
def validate_logprob_args(logits, targets, logit_lengths, target_lengths, blank) -> int:
    """The checks of ``api.rnnt_loss_forward`` (padded layout); returns the blank id."""
    V = v.logits_shapes(logits, targets, logit_lengths, target_lengths)
    blank = v.normalize_blank(blank, V)
    v.check_values("logit_lengths", logit_lengths, target_lengths, targets, logits.shape[1], V,
                   blank)
    return blank


def lattice_forward(lp_blank, lp_emit, logit_lengths, target_lengths, *, fastemit_lambda,
                    need_grad):
    """RNN-T recursion on given log-probabilities (padded ``(B, T, U+1)``, compute dtype).

    ``lp_emit`` must be ``-inf`` at ``u = U_b``. Returns ``(losses, coef_blank, coef_emit)``
    (coefficients padded, or None). Used for ``fused_log_softmax=False``.
    """
    be = get_backend(None, lp_blank)
    xp = be.xp
    B, T, U1 = lp_blank.shape
    plan = make_plan(_host_lengths(logit_lengths), _host_lengths(target_lengths))
    dplan = to_device(plan, xp.zeros((B, 1), dtype=xp.int32), xp)
    mask = _mask(xp, dplan.logit_len, dplan.target_len, T, U1)
    lpb = xp.ascontiguousarray(_pack(lp_blank, mask, lp_blank.dtype))
    lpe = xp.ascontiguousarray(_pack(lp_emit, mask, lp_blank.dtype))
    alpha = xp.empty_like(lpb)
    beta = xp.empty_like(lpb) if need_grad else alpha
    ll = xp.empty(B, dtype=lpb.dtype)
    be.lattice(dplan, 0, B, 0, lpb, lpe, alpha, beta, ll, lpb, lpe, need_grad)
    losses = _fused.losses_from(ll, fastemit_lambda)
    if not need_grad:
        return losses, None, None
    return losses, _pad(xp, lpb, mask), _pad(xp, lpe, mask)
