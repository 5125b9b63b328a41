"""interop/_core.py rebuilds the core's backward context from saved coefficients: guard
that against changes of the core (same context fields, same gradients)."""
import numpy as np

import cutrans
from cutrans.interop import _core
from interop_cases import fused_case, logits_case


def test_fused_context_rebuild_matches_core_forward():
    case = fused_case(0)
    kw = dict(activation="tanh", blank=0, clamp=None, fastemit_lambda=0.0,
              max_workspace_bytes=1500, sample_wise=True)
    _, ctx = cutrans.transducer_forward(*case, **kw)
    losses, coefs = _core.fused_forward(*case, **kw, need_grad=True)
    up = np.array([1.0, 2.0, -1.0])
    got = _core.fused_backward(up, *case, coefs, **kw)
    want = cutrans.transducer_backward(ctx, up)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
    # the rebuilt context equals the one the core's forward made (but the resident chunk)
    import dataclasses
    import cutrans._fused as fused
    seen = {}
    orig = fused.backward
    try:
        fused.backward = lambda c, g, **k: seen.setdefault("ctx", c) and orig(c, g, **k)
        _core.fused_backward(up, *case, coefs, **kw)
    finally:
        fused.backward = orig
    rebuilt = seen["ctx"]
    for f in dataclasses.fields(fused.FusedContext):
        a, b = getattr(rebuilt, f.name), getattr(ctx, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=f.name)
        elif f.name == "inputs":
            for g in dataclasses.fields(fused.FusedInputs):
                x, y = getattr(a, g.name), getattr(b, g.name)
                assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, g.name
        elif f.name not in ("backend", "plan", "dplan", "resident", "io"):
            assert a == b, f.name


def test_padded_coefficients_are_zero_outside_the_lattice():
    logits, targets, t_len, u_len = logits_case(1)
    _, coefs = _core.logits_forward(logits, targets, t_len, u_len, blank=0, clamp=None,
                                    fastemit_lambda=0.0, need_grad=True)
    assert coefs.shape == logits.shape[:3] + (2,)
    cb, ce = coefs[..., 0], coefs[..., 1]
    for b in range(3):
        mask = np.zeros(cb.shape[1:], bool)
        mask[:t_len[b], :u_len[b] + 1] = True
        assert np.all(cb[b][~mask] == 0) and np.all(ce[b][~mask] == 0)
        assert np.all(ce[b][:, u_len[b]] == 0)


def test_points_are_the_valid_grid_points_in_c_order():
    """``_points`` (arithmetic on the device plan, no host read) against the boolean mask of
    the valid points ``t < T_b, u <= U_b``; padding and packing invert each other."""
    from cutrans._plan import make_plan, to_device
    rng = np.random.default_rng(5)
    for B, T, U in ((1, 1, 0), (3, 5, 3), (6, 9, 4)):
        t_len = rng.integers(1, T + 1, B)
        u_len = rng.integers(0, U + 1, B)
        t_len[-1], u_len[0] = 1, 0  # a single frame, no labels
        dplan = to_device(make_plan(t_len, u_len), np.zeros((B, max(U, 1)), np.int32), np)
        t, u = np.arange(T)[None, :, None], np.arange(U + 1)[None, None, :]
        mask = (t < t_len[:, None, None]) & (u <= u_len[:, None, None])
        points = _core._points(np, dplan, T, U + 1)
        np.testing.assert_array_equal(points, np.flatnonzero(mask))
        grid = (B, T, U + 1)
        packed = rng.standard_normal((dplan.rows, 2))
        padded = _core._pad(np, packed, points, grid)
        assert padded.shape == grid + (2,) and not padded[~mask].any()
        np.testing.assert_array_equal(padded[mask], packed)
        np.testing.assert_array_equal(_core._pack(padded, points, grid, np.float64), packed)
