"""The fused op stays within its workspace budget (NumPy backend, tracemalloc)."""
import tracemalloc

import numpy as np

import cutrans

MB = 1 << 20


def test_fused_peak_memory_bounded_by_budget():
    rng = np.random.default_rng(0)
    B, T, U, V, H = 4, 400, 100, 4096, 8
    batched_bytes = B * T * (U + 1) * V * 4  # the (B, T, U+1, V) float32 logits alone
    assert batched_bytes > 2 * 1024 ** 3
    enc = rng.standard_normal((B, T, H), dtype=np.float32)
    pred = rng.standard_normal((B, U + 1, H), dtype=np.float32)
    weight = rng.standard_normal((V, H), dtype=np.float32) * 0.3
    bias = np.zeros(V, np.float32)
    targets = rng.integers(1, V, size=(B, U))
    t_len = np.full(B, T)
    u_len = np.full(B, U)
    rows = B * T * (U + 1)
    budget = 48 * MB
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = cutrans.transducer_loss(enc, pred, weight, bias, targets, t_len, u_len,
                                      max_workspace_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    grad_bytes = sum(g.nbytes for g in out.grads)
    per_row_bytes = 64  # per-row arrays (lp, alpha, beta, coefficients) + padded lattice grids
    bound = budget + per_row_bytes * rows + 2 * grad_bytes + 8 * MB
    print(f"batched logits {batched_bytes / MB:.0f} MiB; fused peak {peak / MB:.1f} MiB "
          f"(budget {budget / MB:.0f} MiB, rows {rows}, bound {bound / MB:.1f} MiB)")
    assert peak < bound
    assert peak < batched_bytes / 20
    assert np.isfinite(out.loss)


def test_lattice_memory_stays_o_rows_for_skewed_lengths():
    # one long utterance among many one-frame ones: padded grids would be B * T * U
    rng = np.random.default_rng(1)
    B, T, U, V, H = 400, 300, 80, 16, 4
    t_len = np.ones(B, np.int64)
    u_len = np.zeros(B, np.int64)
    t_len[7], u_len[7] = T, U
    rows = int((t_len * (u_len + 1)).sum())
    case = (rng.standard_normal((B, T, H)), rng.standard_normal((B, U + 1, H)),
            rng.standard_normal((V, H)), rng.standard_normal(V),
            rng.integers(1, V, size=(B, U)), t_len, u_len)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        losses, _ = cutrans.transducer_forward(*case, max_workspace_bytes=MB)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    padded_grid = B * (T + 1) * (U + 2) * 8
    print(f"rows {rows}, fused forward peak {peak / MB:.1f} MiB, one padded grid "
          f"{padded_grid / MB:.0f} MiB")
    assert peak < MB + 400 * rows + 2 * MB
    assert peak < padded_grid / 4
    assert np.all(np.isfinite(losses))
