"""Independent float64 oracles of the transducer variants (PyTorch autograd for gradients).

Written from the papers' / reference implementations' definitions, per variant, without
cutrans code (no ``cutrans._topology`` arcs):

* ``rnnt`` (Graves 2012) with k2's ``delay_penalty``: emissions at frame ``t`` get
  ``delay_penalty * ((T - 1) / 2 - t)``;
* ``modified`` (k2 ``rnnt_type="modified"``): blank and label both advance one frame; the
  lattice runs over ``t = 0..T`` and ends at ``(T, U)``;
* ``multiblank`` (Xu et al. 2022, NeMo ``MultiblankRNNTLossPytorch``): big blank ``i``
  (id ``blank - 1 - i``) advances ``big_blank_durations[i]`` frames; all log-probabilities
  ``log_softmax - sigma``;
* ``tdt`` (Xu et al. 2023, NeMo ``TDTLossPytorch``): token and duration log-softmaxes;
  a label with duration ``d`` moves ``(t, u) -> (t + d, u + 1)``, a blank with ``d >= 1``
  ``(t, u) -> (t + d, u)``; only blanks end a path (landing on ``t = T``); ``omega`` mixes
  in the standard RNN-T of the token log-probabilities: ``(1-omega) L_tdt + omega L_rnnt``.

``recursion_loss`` is a dynamic programme; ``enumerated_loss`` sums every complete path
explicitly (tiny shapes), a check of the recursion itself.
"""
from __future__ import annotations

import math

import torch

NEG = float("-inf")


def _lse(terms):
    # unreachable cells are -inf (log-probabilities are finite): drop them, so that their
    # logsumexp has no NaN gradient
    terms = [x for x in terms if float(x.detach() if torch.is_tensor(x) else x) != NEG]
    if not terms:
        return NEG
    return torch.logsumexp(torch.stack(terms), 0)


def log_probs(z, spec: dict, blank: int):
    """(token log-probs (T, U+1, V), duration log-probs (T, U+1, D) or None)."""
    durations = spec.get("durations")
    sigma = spec.get("sigma", 0.0)
    if spec.get("variant") == "tdt":
        V = z.shape[-1] - len(durations)
        return (torch.log_softmax(z[..., :V], -1) - sigma,
                torch.log_softmax(z[..., V:], -1))
    return torch.log_softmax(z, -1) - sigma, None


def _forward(T, U, dtype, incoming):
    """alpha over ``0 <= t < T``, ``0 <= u <= U`` from ``alpha(0, 0) = 0``: ``alpha(t, u)``
    is the logsumexp of ``incoming(alpha, t, u)`` (the arcs into the point)."""
    alpha = {(0, 0): torch.zeros((), dtype=dtype)}
    for t in range(T):
        for u in range(U + 1):
            if t or u:
                alpha[t, u] = _lse(incoming(alpha, t, u))
    return alpha


def _rnnt_ll(tok, y, T, U, blank, delay=0.0, big=()):
    """Standard RNN-T (``big=()``), or multi-blank with big blanks of durations ``big``."""
    def incoming(alpha, t, u):
        terms = []
        if t > 0:
            terms.append(alpha[t - 1, u] + tok[t - 1, u, blank])
        for i, d in enumerate(big):
            if t - d >= 0:
                terms.append(alpha[t - d, u] + tok[t - d, u, blank - 1 - i])
        if u > 0:
            terms.append(alpha[t, u - 1] + tok[t, u - 1, y[u - 1]]
                         + delay * ((T - 1) / 2 - t))
        return terms

    alpha = _forward(T, U, tok.dtype, incoming)
    ends = [alpha[T - 1, U] + tok[T - 1, U, blank]]
    ends += [alpha[T - d, U] + tok[T - d, U, blank - 1 - i] for i, d in enumerate(big)
             if T - d >= 0]
    return _lse(ends)


def _modified_ll(tok, y, T, U, blank, delay=0.0):
    alpha = {(0, 0): torch.zeros((), dtype=tok.dtype)}
    for t in range(1, T + 1):
        for u in range(U + 1):
            terms = []
            if (t - 1, u) in alpha:
                terms.append(alpha[t - 1, u] + tok[t - 1, u, blank])
            if u > 0 and (t - 1, u - 1) in alpha:
                terms.append(alpha[t - 1, u - 1] + tok[t - 1, u - 1, y[u - 1]]
                             + delay * ((T - 1) / 2 - (t - 1)))
            alpha[t, u] = _lse(terms)
    return alpha[T, U]


def _tdt_ll(tok, dur, y, T, U, blank, durations):
    def incoming(alpha, t, u):
        terms = []
        for n, d in enumerate(durations):
            if d >= 1 and t - d >= 0:
                terms.append(alpha[t - d, u] + tok[t - d, u, blank] + dur[t - d, u, n])
            if u > 0 and t - d >= 0:
                terms.append(alpha[t - d, u - 1] + tok[t - d, u - 1, y[u - 1]]
                             + dur[t - d, u - 1, n])
        return terms

    alpha = _forward(T, U, tok.dtype, incoming)
    ends = [alpha[T - d, U] + tok[T - d, U, blank] + dur[T - d, U, n]
            for n, d in enumerate(durations) if d >= 1 and T - d >= 0]
    return _lse(ends)


def sample_log_like(z, y, T: int, U: int, spec: dict, blank: int):
    """log P(y | x) of one sample's logits ``z`` (T_max, U_max+1, n) (the variant's mix with
    omega: the weighted sum of both log-likelihoods)."""
    variant = spec.get("variant", "rnnt")
    tok, dur = log_probs(z, spec, blank)
    delay = spec.get("delay_penalty", 0.0)
    if variant == "rnnt":
        return _rnnt_ll(tok, y, T, U, blank, delay)
    if variant == "modified":
        return _modified_ll(tok, y, T, U, blank, delay)
    if variant == "multiblank":
        return _rnnt_ll(tok, y, T, U, blank, big=spec.get("big_blank_durations", ()))
    ll = _tdt_ll(tok, dur, y, T, U, blank, spec["durations"])
    omega = spec.get("omega", 0.0)
    if omega:
        ll = (1 - omega) * ll + omega * _rnnt_ll(tok, y, T, U, blank)
    return ll


def recursion_loss(logits, targets, t_len, u_len, spec: dict, blank: int,
                   fastemit_lambda: float = 0.0):
    """Per-sample losses (B,) of padded logits (B, T, U+1, n) (a float64 torch tensor,
    differentiable); FastEmit's reported loss ``(1 + lambda) (-LL)``."""
    out = []
    for b in range(logits.shape[0]):
        y = [int(k) for k in targets[b, :int(u_len[b])]]
        ll = sample_log_like(logits[b], y, int(t_len[b]), int(u_len[b]), spec, blank)
        out.append(-(1.0 + fastemit_lambda) * ll)
    return torch.stack(out)


# ------------------------------------------------------------------ path enumeration
def _moves(spec, blank, y, T, U):
    """Every step as (dt, du, [(kind, index)]) per variant: kind "tok" / "dur"."""
    variant = spec.get("variant", "rnnt")
    if variant == "tdt":
        for n, d in enumerate(spec["durations"]):
            if d >= 1:
                yield d, 0, [("tok", blank), ("dur", n)], True
            yield d, 1, [("tok", "label"), ("dur", n)], False
        return
    yield (1, 0, [("tok", blank)], True)
    if variant == "multiblank":
        for i, d in enumerate(spec.get("big_blank_durations", ())):
            yield d, 0, [("tok", blank - 1 - i)], True
    yield (1 if variant == "modified" else 0), 1, [("tok", "label")], variant == "modified"


def _enumerate(tok, dur, y, T, U, spec, blank) -> float:
    """log of the summed probability of every complete path."""
    delay = spec.get("delay_penalty", 0.0)
    moves = list(_moves(spec, blank, y, T, U))
    total = []

    def walk(t, u, acc):
        for dt, du, parts, can_end in moves:
            if du and u >= U:
                continue
            w = 0.0
            for kind, idx in parts:
                if kind == "dur":
                    w += float(dur[t, u, idx])
                else:
                    w += float(tok[t, u, y[u] if idx == "label" else idx])
                    if idx == "label":
                        w += delay * ((T - 1) / 2 - t)
            nt, nu = t + dt, u + du
            if nt == T and nu == U and can_end:
                total.append(acc + w)
            elif nt < T and nu <= U:
                walk(nt, nu, acc + w)

    walk(0, 0, 0.0)
    if not total:
        return -math.inf
    m = max(total)
    return m + math.log(sum(math.exp(x - m) for x in total))


def enumerated_loss(z, y, T: int, U: int, spec: dict, blank: int) -> float:
    """-log P(y | x) summed over every complete path explicitly, one sample (tiny shapes;
    TDT's omega: the same mix as ``sample_log_like``)."""
    tok, dur = (x.detach() if x is not None else None for x in log_probs(z, spec, blank))
    ll = _enumerate(tok, dur, y, T, U, spec, blank)
    omega = spec.get("omega", 0.0)
    if omega:
        ll = (1 - omega) * ll + omega * _enumerate(tok, None, y, T, U, {}, blank)
    return -ll
