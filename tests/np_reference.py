"""An independent float64 NumPy reference of both operations. Nothing here imports cutrans.

Straight from the math of DESIGN.md, one sample at a time, with Python loops over the
lattice (tiny shapes only):

* ``logits_loss_grad``: per-sample losses ``(1 + lambda) * (-log P(y|x))`` and the gradient
  of ``sum_b up[b] * loss_b`` w.r.t. padded logits ``(B, T, U+1, V)`` via alpha/beta:
  ``g = (cb + (1+lambda) ce) softmax - cb [k = blank] - (1+lambda) ce [k = y_u]`` with
  ``cb = exp(alpha + lp_blank + beta(t+1,u) - LL)``, ``ce = exp(alpha + lp_emit + beta(t,u+1)
  - LL)``; clipped to ``[-clamp, clamp]`` (clamp > 0) before the upstream scaling; zero on
  the padding.
* ``fused_loss_grads``: the batched joint ``z = act(enc[b,t] + pred[b,u]) W^T + bias`` and the
  chain rule from the logits gradient: dW = sum g^T h, dbias = sum g, dh = g W,
  dpre = dh act'(h), d_enc = sum_u dpre, d_pred = sum_t dpre (valid lattice points only).
"""
from __future__ import annotations

import numpy as np

NEG_INF = -np.inf


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _lae(a, b):
    return np.logaddexp(a, b)


def sample_lattice(lp, y, T, U, blank):
    """alpha, beta (T, U+1), LL, lp_blank, lp_emit for one sample's log-probs (T, U+1, V)."""
    lpb = lp[:T, :U + 1, blank]
    lpe = np.full((T, U + 1), NEG_INF)
    for u in range(U):
        lpe[:, u] = lp[:T, u, y[u]]
    alpha = np.full((T, U + 1), NEG_INF)
    alpha[0, 0] = 0.0
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                continue
            a = alpha[t - 1, u] + lpb[t - 1, u] if t > 0 else NEG_INF
            e = alpha[t, u - 1] + lpe[t, u - 1] if u > 0 else NEG_INF
            alpha[t, u] = _lae(a, e)
    ll = alpha[T - 1, U] + lpb[T - 1, U]
    beta = np.full((T + 1, U + 2), NEG_INF)
    beta[T - 1, U] = lpb[T - 1, U]
    for t in range(T - 1, -1, -1):
        for u in range(U, -1, -1):
            if t == T - 1 and u == U:
                continue
            beta[t, u] = _lae(beta[t + 1, u] + lpb[t, u], beta[t, u + 1] + lpe[t, u])
    beta[T, U] = 0.0  # the final blank's "next" state
    return alpha, beta, ll, lpb, lpe


def logits_loss_grad(logits, targets, t_len, u_len, blank, *, fastemit_lambda=0.0, clamp=0.0,
                     upstream=None, need_grad=True):
    """(losses (B,), grad (B, T, U+1, V) or None), float64; ``blank`` in [0, V)."""
    z = np.asarray(logits, np.float64)
    B, _, _, V = z.shape
    lam = float(fastemit_lambda)
    up = np.ones(B) if upstream is None else np.asarray(upstream, np.float64)
    losses = np.empty(B)
    grad = np.zeros_like(z) if need_grad else None
    for b in range(B):
        T, U = int(t_len[b]), int(u_len[b])
        y = [int(k) for k in targets[b, :U]]
        lp = log_softmax(z[b, :T, :U + 1])
        alpha, beta, ll, lpb, lpe = sample_lattice(lp, y, T, U, blank)
        losses[b] = -(1.0 + lam) * ll
        if not need_grad:
            continue
        cb = np.exp(alpha + lpb + beta[1:T + 1, :U + 1] - ll)
        ce = np.exp(alpha + lpe + beta[:T, 1:U + 2] - ll)
        ce[:, U] = 0.0
        ce = (1.0 + lam) * ce
        g = (cb + ce)[..., None] * np.exp(lp)
        g[..., blank] -= cb
        for u in range(U):
            g[:, u, y[u]] -= ce[:, u]
        if clamp and clamp > 0:
            g = np.clip(g, -clamp, clamp)
        grad[b, :T, :U + 1] = up[b] * g
    return losses, grad


ACT = {
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
    "relu": (lambda x: np.maximum(x, 0.0), lambda h: (h > 0).astype(np.float64)),
    "identity": (lambda x: x, lambda h: np.ones_like(h)),
}


def joint_logits(enc, pred, weight, bias, activation="tanh"):
    """h (B, T, U+1, H) and z (B, T, U+1, V) in float64 (the batched computation)."""
    f, _ = ACT[activation]
    e, p, w, c = (np.asarray(x, np.float64) for x in (enc, pred, weight, bias))
    h = f(e[:, :, None, :] + p[:, None, :, :])
    return h, h @ w.T + c


def fused_loss_grads(enc, pred, weight, bias, targets, t_len, u_len, blank, *,
                     activation="tanh", fastemit_lambda=0.0, clamp=0.0, upstream=None,
                     need_grad=True):
    """(losses (B,), (d_enc, d_pred, d_weight, d_bias) or None), float64."""
    h, z = joint_logits(enc, pred, weight, bias, activation)
    losses, g = logits_loss_grad(z, targets, t_len, u_len, blank,
                                 fastemit_lambda=fastemit_lambda, clamp=clamp,
                                 upstream=upstream, need_grad=need_grad)
    if not need_grad:
        return losses, None
    w = np.asarray(weight, np.float64)
    d_w = np.einsum("btuv,btuh->vh", g, h)
    d_b = g.sum((0, 1, 2))
    dpre = (g @ w) * ACT[activation][1](h)  # zero on the padding, where g is zero
    d_enc, d_pred = dpre.sum(2), dpre.sum(1)
    return losses, (d_enc, d_pred, d_w, d_b)


def term_magnitudes(z_valid_max, t_len, u_len, upstream, losses, fastemit_lambda=0.0):
    """Scales for comparing the logits op in floating point: (loss, grad).

    A loss sums ~T_b + U_b log-probabilities of logits up to ``z_valid_max`` in magnitude.
    Every logits-gradient entry is a difference of terms up to (1 + lambda) |up_b|, with
    coefficients ``exp(alpha + lp + beta - LL)`` whose exponent is a cancellation of terms
    of the size of the log-likelihood: its rounding error grows with |LL_b|. Errors of a
    float computation scale with these, not with the (possibly tiny) results."""
    t, u = np.asarray(t_len), np.asarray(u_len)
    loss = max(1.0, float((t + u).max()) * max(1.0, float(z_valid_max)))
    return loss, float(np.max(_grad_bounds(upstream, losses, fastemit_lambda)))


def _grad_bounds(upstream, losses, fastemit_lambda):
    """(B,) bound of a sample's logits-gradient terms: (1 + lambda) |up_b| (1 + |LL_b|)."""
    lam = 1.0 + fastemit_lambda
    ll = np.abs(np.asarray(losses, np.float64)) / lam
    return lam * np.abs(np.asarray(upstream, np.float64)) * (1.0 + ll)


def fused_term_magnitudes(enc, pred, weight, bias, t_len, u_len, losses, *,
                          activation="tanh", fastemit_lambda=0.0, upstream=None):
    """Scales of the fused op: {"loss", "enc", "pred", "weight", "bias"}: the chain rule of
    ``fused_loss_grads`` on magnitudes, each logits-gradient entry replaced by its bound
    (see ``term_magnitudes``) and every factor by its absolute value."""
    h, z = joint_logits(enc, pred, weight, bias, activation)
    B, T, U1, V = z.shape
    up = np.ones(B) if upstream is None else np.asarray(upstream, np.float64)
    valid = np.zeros((B, T, U1), bool)
    for b in range(B):
        valid[b, :int(t_len[b]), :int(u_len[b]) + 1] = True
    G = np.where(valid, _grad_bounds(up, losses, fastemit_lambda)[:, None, None], 0.0)
    loss, _ = term_magnitudes(float(np.abs(z[valid]).max()), t_len, u_len, up, losses,
                              fastemit_lambda)
    w = np.abs(np.asarray(weight, np.float64))
    dh = G[..., None] * w.sum(0)  # (B, T, U1, H): sum_k G |W_kh|
    dpre = dh * np.abs(ACT[activation][1](h))
    return {"loss": loss, "bias": float(G.sum()) or 1.0,
            "weight": float(np.einsum("btu,btuh->h", G, np.abs(h)).max()) or 1.0,
            "enc": float(dpre.sum(2).max()) or 1.0, "pred": float(dpre.sum(1).max()) or 1.0}
