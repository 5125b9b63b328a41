"""Independent oracles for the tests. Nothing here imports cutrans.

* ``brute_force_loss``: log-sum over every alignment path (tiny T, U only).
* ``torch_rnnt_losses``: naive PyTorch autograd RNN-T on a full 4-D log-prob tensor.
* ``torch_fused_losses``: the batched computation the fused op replaces: full 4-D joint
  ``act(enc[:, :, None] + pred[:, None]) @ W.T + b``, log_softmax, alpha recursion.
"""
from __future__ import annotations

import itertools

import numpy as np


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def brute_force_loss(logits_btuv, targets, T: int, U: int, blank: int) -> float:
    """-log sum over all monotonic paths (T blanks, U emissions, last step blank at (T-1, U))."""
    lp = log_softmax(logits_btuv)
    total = -np.inf
    steps = T - 1 + U
    for emit_steps in itertools.combinations(range(steps), U):
        emit_steps = set(emit_steps)
        t = u = 0
        s = 0.0
        for i in range(steps):
            if i in emit_steps:
                s += lp[t, u, targets[u]]
                u += 1
            else:
                s += lp[t, u, blank]
                t += 1
        s += lp[T - 1, U, blank]
        total = np.logaddexp(total, s)
    return -total


def torch_rnnt_losses(log_probs, targets, T_len, U_len, blank: int):
    """Per-sample losses from log-probs (B, T, U+1, V) with torch autograd (python loops)."""
    import torch

    losses = []
    for b in range(log_probs.shape[0]):
        T, U = int(T_len[b]), int(U_len[b])
        lp = log_probs[b]
        alpha = [[None] * (U + 1) for _ in range(T)]
        for t in range(T):
            for u in range(U + 1):
                terms = []
                if t == 0 and u == 0:
                    terms.append(lp.new_zeros(()))
                if t > 0:
                    terms.append(alpha[t - 1][u] + lp[t - 1, u, blank])
                if u > 0:
                    terms.append(alpha[t][u - 1] + lp[t, u - 1, int(targets[b, u - 1])])
                alpha[t][u] = torch.logsumexp(torch.stack(terms), 0)
        losses.append(-(alpha[T - 1][U] + lp[T - 1, U, blank]))
    return torch.stack(losses)


ACTS = {
    "tanh": lambda x: x.tanh(),
    "relu": lambda x: x.relu(),
    "identity": lambda x: x,
}


def torch_fused_losses(enc, pred, weight, bias, targets, T_len, U_len, activation: str,
                       blank: int):
    """The default batched computation with autograd: builds (B, T, U+1, V)."""
    import torch

    h = ACTS[activation](enc[:, :, None, :] + pred[:, None, :, :])
    z = h @ weight.T + bias
    return torch_rnnt_losses(torch.log_softmax(z, -1), targets, T_len, U_len, blank)
