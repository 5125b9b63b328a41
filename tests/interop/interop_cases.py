"""Random cases shared by the adapter tests (NumPy arrays; tests convert them)."""
import numpy as np


def logits_case(seed, B=3, T=5, U=3, V=6, blank=0, dtype=np.float64):
    """logits (B,T,U+1,V), targets (B,U) int32, t_len, u_len int32; sample 0 uses the
    padded sizes, one sample has zero labels, one a single frame (if B >= 3)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, U + 1, V)).astype(dtype)
    labels = [k for k in range(V) if k != blank % V]
    targets = rng.choice(labels, size=(B, U)).astype(np.int32)
    t_len = rng.integers(1, T + 1, size=B).astype(np.int32)
    u_len = rng.integers(0, U + 1, size=B).astype(np.int32)
    t_len[0], u_len[0] = T, U
    if B >= 3:
        u_len[1], t_len[2] = 0, 1
    return logits, targets, t_len, u_len


def fused_case(seed, B=3, T=4, U=3, H=5, V=7, blank=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    _, targets, t_len, u_len = logits_case(seed, B, T, U, V, blank)
    enc = rng.standard_normal((B, T, H)).astype(dtype)
    pred = rng.standard_normal((B, U + 1, H)).astype(dtype)
    weight = (rng.standard_normal((V, H)) / np.sqrt(H)).astype(dtype)
    bias = (0.1 * rng.standard_normal(V)).astype(dtype)
    return enc, pred, weight, bias, targets, t_len, u_len
