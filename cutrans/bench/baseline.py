"""The batched baseline in PyTorch: full 4-D joint + log_softmax + RNN-T loss, autograd.

This is the "default batched computation" that the seed paper compares against (the
``baseline-autocast`` row runs the joint under ``torch.autocast`` with float32 parameters
and casts the logits to float32 for the loss)::

    h      = act(enc[:, :, None, :] + pred[:, None, :, :])      # (B, T, U+1, H)
    logits = h @ W.T + b                                         # (B, T, U+1, V)
    lp     = log_softmax(logits)                                 # (B, T, U+1, V)
    loss   = mean_b( -log P(y_b | x_b) )                         # RNN-T, autograd

The RNN-T part uses ``torchaudio.functional.rnnt_loss`` when torchaudio is installed, as a
user calls it: on the (float32) logits with its default ``fused_log_softmax=True`` (the
log_softmax inside its kernel; until 2026-11-26 the bench applied an explicit
``log_softmax`` and ``fused_log_softmax=False``: librispeech-100 fp32 on an H100, 163 ms
then, 148 ms this way). Without torchaudio: the explicit ``log_softmax`` and ``alpha_loss``
below: a vectorised alpha recursion over the anti-diagonals ``n = t + u`` of the lattice,
differentiated by autograd. Masked lattice points hold a large finite negative number
instead of ``-inf`` (``logaddexp(-inf, -inf)`` has a NaN gradient).
"""
from __future__ import annotations

import importlib.util

NEG = -1.0e30  # "log 0" that keeps autograd finite (fp32 and fp64 compute)


def has_torchaudio() -> bool:
    return importlib.util.find_spec("torchaudio") is not None


def _skew_index(torch, T: int, U1: int, device):
    """Index tensors mapping diagonal layout ``(n, t)`` to lattice ``(t, u = n - t)``."""
    n = torch.arange(T + U1 - 1, device=device)[:, None]
    t = torch.arange(T, device=device)[None, :]
    u = n - t
    valid = (u >= 0) & (u < U1)
    return t.expand_as(u), u.clamp(0, U1 - 1), valid


def alpha_loss(lp_blank, lp_emit, enc_lengths, target_lengths):
    """Per-sample ``-log P(y|x)`` from ``lp_blank (B, T, U+1)`` and ``lp_emit (B, T, U)``.

    ``alpha(t, u) = logaddexp(alpha(t-1, u) + lp_blank(t-1, u), alpha(t, u-1) + lp_emit(t, u-1))``
    computed one anti-diagonal at a time for the whole batch (T + U steps of (B, T) tensors).
    """
    import torch

    B, T, U1 = lp_blank.shape
    dev, dt = lp_blank.device, lp_blank.dtype
    ti, ui, valid = _skew_index(torch, T, U1, dev)  # (N, T) each
    neg = torch.tensor(NEG, dtype=dt, device=dev)
    blank_d = torch.where(valid, lp_blank[:, ti, ui], neg)  # (B, N, T)
    emit_pad = torch.cat([lp_emit, lp_emit.new_full((B, T, 1), NEG)], dim=2)  # (B, T, U+1)
    emit_d = torch.where(valid & (ui < U1 - 1), emit_pad[:, ti, ui], neg)
    alpha = torch.full((B, T), NEG, dtype=dt, device=dev)
    alpha = torch.cat([torch.zeros((B, 1), dtype=dt, device=dev), alpha[:, 1:]], dim=1)
    diags = [alpha]
    pad = torch.full((B, 1), NEG, dtype=dt, device=dev)
    for n in range(1, T + U1 - 1):
        from_blank = torch.cat([pad, (alpha + blank_d[:, n - 1])[:, :-1]], dim=1)  # t-1 -> t
        from_emit = alpha + emit_d[:, n - 1]  # u-1 -> u, same t
        alpha = torch.where(valid[n], torch.logaddexp(from_blank, from_emit), neg)
        diags.append(alpha)
    all_alpha = torch.stack(diags, dim=1)  # (B, N, T)
    t_last = enc_lengths.long() - 1
    u_last = target_lengths.long()
    b = torch.arange(B, device=dev)
    ll = all_alpha[b, t_last + u_last, t_last] + lp_blank[b, t_last, u_last]
    return -ll


def joint_logits_torch(enc, pred, weight, bias, activation: str = "tanh"):
    """Padded ``(B, T, U+1, V)`` logits ``act(enc[:, :, None] + pred[:, None]) @ W.T + b``
    (under ``torch.autocast`` the output layer runs in the autocast dtype)."""
    import torch

    act = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda x: x}[activation]
    h = act(enc[:, :, None, :] + pred[:, None, :, :])
    return torch.nn.functional.linear(h, weight, bias)


def loss_on_logits(logits, targets, enc_lengths, target_lengths,
                   use_torchaudio: bool | None = None):
    """Mean RNN-T loss of padded logits: log_softmax and the loss in float32 (float64 for
    float64 logits), as mixed-precision training does; torchaudio (when installed) with its
    default fused log_softmax, as its users call it."""
    import torch

    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if use_torchaudio is None:
        use_torchaudio = has_torchaudio()
    if use_torchaudio:
        import torchaudio.functional as taf

        return taf.rnnt_loss(logits.to(cdt), targets.int(), enc_lengths.int(),
                             target_lengths.int(), blank=0, reduction="mean")
    lp = torch.log_softmax(logits.to(cdt), dim=-1)
    lp_blank = lp[..., 0]
    idx = targets.long()[:, None, :, None].expand(-1, lp.shape[1], -1, 1)
    lp_emit = lp[:, :, :-1, :].gather(3, idx)[..., 0]
    return alpha_loss(lp_blank, lp_emit, enc_lengths, target_lengths).mean()


def batched_loss(enc, pred, weight, bias, targets, enc_lengths, target_lengths,
                 activation: str = "tanh", use_torchaudio: bool | None = None):
    """Mean RNN-T loss of the full 4-D batched computation (differentiable, torch tensors).

    The joint and the output layer run in the input dtype; log_softmax and the loss in
    float32 (float64 for float64 inputs), as mixed-precision training does.
    """
    logits = joint_logits_torch(enc, pred, weight, bias, activation)
    return loss_on_logits(logits, targets, enc_lengths, target_lengths, use_torchaudio)
