"""Op-by-op comparisons of a kernel backend (emulated or CuPy) with the NumPy backend.

Each ``check_*`` runs one backend op over every chunk of a chunking on host inputs copied to
the backend's ``xp``, runs ``NumpyBackend`` on the same inputs, and compares with
``kcases.TOL``. Optional ``stats`` dict collects max abs/rel errors per dtype. Per-row state
arrays are tested with an offset (``rbase``) as the fused op's group state uses them.
"""
from __future__ import annotations

import numpy as np

from kcases import REF, assert_close, cdt, np_dtype, to_np, to_xp


def value_arrays(case, dtype):
    """Reference per-row values (R, W) of the case's topology from random logits, via the
    NumPy backend."""
    c = cdt(dtype)
    z = case.logits("float64").astype(c)
    values = np.empty((case.R, case.topo.width), c)
    REF.row_stats(z, case.layout(z, "packed", 0), 0, case.R, case.dplan(), case.topo, values)
    return values


def _lse_columns(topo):
    return 2 if topo.durations else 1


def check_row_stats(be, case, dtype, layout, chunks, stats=None, rbase=0):
    """row_stats with the per-row arrays (values (S, W), lse (S, G)) holding rows [rbase, R)."""
    xp, c, topo = be.xp, cdt(dtype), case.topo
    z = case.logits(dtype, layout)
    zx, dp, dpx = to_xp(z, xp), case.dplan(), case.dplan(xp)
    n_state = case.R - rbase
    shapes = ((n_state, topo.width), (n_state, _lse_columns(topo)))
    out = [np.full(sh, 7.0, c) for sh in shapes]
    outx = [xp.full(sh, 7.0, dtype=c) for sh in shapes]
    for row0, n in chunks:
        if row0 < rbase:
            continue
        lay = case.layout(z, layout, row0)
        REF.row_stats(case.chunk_view(z, layout, row0, n), lay, row0, n, dp, topo, out[0],
                      rbase, out[1])
        be.row_stats(case.chunk_view(zx, layout, row0, n), lay, row0, n, dpx, topo, outx[0],
                     rbase, outx[1])
    for name, a, e in zip(("values", "lse"), outx, out):
        assert_close(to_np(a), e, np.dtype(c).name, f"row_stats {name}", stats,
                     f"row_stats {dtype}")


def check_row_grad(be, case, dtype, layout, chunks, *, in_place, fastemit=0.0, clamp=0.0,
                   stats=None, with_lse=False):
    """row_grad; ``with_lse``: the rows' logsumexps are given (one read of each row)."""
    xp, c, topo = be.xp, cdt(dtype), case.topo
    rng = np.random.default_rng(5)
    z = case.logits(dtype, layout)
    coefs = rng.uniform(0, 1, (case.R, topo.width)).astype(c)
    coefs[case.plan.offsets[1:] - 1, topo.emit] = 0  # u = U_b (last row): no emission
    coefs2 = rng.uniform(0, 1, (case.R, 2)).astype(c) if topo.omega else None
    if coefs2 is not None:
        coefs2[case.plan.offsets[1:] - 1, 1] = 0
    scale = rng.uniform(0.5, 2, case.B).astype(c)
    dp, dpx = case.dplan(), case.dplan(xp)
    lse = None
    if with_lse:  # the reference logsumexps of every row, from the NumPy backend
        lse = np.empty((case.R, _lse_columns(topo)), c)
        REF.row_stats(z, case.layout(z, layout, 0), 0, case.R, dp, topo,
                      np.empty((case.R, topo.width), c), 0, lse)
    pad = np.nan if layout == "padded" else 0
    ref = z.copy() if in_place else np.full_like(z, pad)
    zx = to_xp(z, xp)
    got = zx if in_place else to_xp(np.full_like(z, pad), xp)
    lsex = None if lse is None else to_xp(lse, xp)
    c2x = None if coefs2 is None else to_xp(coefs2, xp)
    for row0, n in chunks:
        lay = case.layout(z, layout, row0)
        zin = case.chunk_view(ref if in_place else z, layout, row0, n)
        REF.row_grad(zin, case.chunk_view(ref, layout, row0, n), lay, row0, n, dp, topo,
                     coefs, scale, fastemit, clamp, 0, lse, coefs2)
        be.row_grad(case.chunk_view(zx, layout, row0, n), case.chunk_view(got, layout, row0, n),
                    lay, row0, n, dpx, topo, to_xp(coefs, xp), to_xp(scale, xp), fastemit,
                    clamp, 0, lsex, c2x)
    g = to_np(got, dtype)
    assert g.dtype == np_dtype(dtype)
    assert_close(g, ref, dtype, "row_grad", stats, f"row_grad {dtype}")
    if not in_place:
        assert np.array_equal(to_np(zx, dtype).view(np.uint8), z.view(np.uint8)), "z modified"
    return g


def run_lattice(be, case, values, need_grad, alias, b0=0, b1=None, topo=None):
    """Run ``be.lattice`` on samples [b0, b1) with per-row arrays of their rows only;
    returns host (alpha, ll, coefs) (ll is (B,), 9.0 elsewhere)."""
    xp, topo = be.xp, topo or case.topo
    b1 = case.B if b1 is None else b1
    r0, r1 = int(case.plan.offsets[b0]), int(case.plan.offsets[b1])
    c = values.dtype
    dpx = case.dplan(xp) if be is not REF else case.dplan()
    vals = to_xp(values[r0:r1].copy(), xp)
    alpha = xp.full(r1 - r0, 9.0, dtype=c)
    beta = xp.full(r1 - r0, 9.0, dtype=c) if need_grad else alpha
    ll = xp.full(case.B, 9.0, dtype=c)
    coefs = vals if alias else xp.full((r1 - r0, topo.width), 9.0, dtype=c)
    be.lattice(dpx, topo, b0, b1, r0, vals, alpha, beta, ll, coefs, need_grad)
    # TDT's mixed-in RNN-T (aliased) writes the first two of the W columns only
    return to_np(alpha), to_np(ll), to_np(coefs)[:, :topo.width]


#: float32 lattice: the backend's error against a float64 run may be at most this many times
#: NumPy's float32 error on the same inputs (floored at one float32 ulp of the lattice's
#: largest |alpha|, |beta|). Measured: the emulated kernels match NumPy float32 to 1.2e-7
#: (ratio 1.0); on an H100 the CUDA coef_blank of shape (16, 300, 120, 4) differed from
#: NumPy float32 by 6.1e-5 where NumPy float32 itself is 3.4e-4 off float64 (ratio <= 1.2).
LATTICE_FP32_FACTOR = 4


def assert_float32_lattice(got, ref32, ref64, magnitude, what, stats=None, key=None):
    """max|got - ref64| <= LATTICE_FP32_FACTOR * max(max|ref32 - ref64|, ulp(magnitude)):
    a float32 lattice is as accurate as NumPy's float32 one, whatever its summation order
    (alpha/beta sum hundreds of log-probabilities: their error grows with |alpha|)."""
    a, r32, r64 = (np.asarray(x, np.float64) for x in (got, ref32, ref64))
    assert a.shape == r64.shape, (what, a.shape, r64.shape)
    fin = np.isfinite(r64)
    assert np.array_equal(np.isfinite(a), fin) and np.array_equal(a[~fin], r64[~fin]), \
        f"{what}: non-finite entries differ from the float64 run"
    if not fin.any():
        return
    e_be = float(np.abs(a[fin] - r64[fin]).max())
    e_np = float(np.abs(r32[fin] - r64[fin]).max())
    floor = float(np.finfo(np.float32).eps) * (1.0 + magnitude)
    if stats is not None:
        k = key or what
        old = stats.get(k, (0.0, 0.0))
        stats[k] = (max(old[0], e_be), max(old[1], e_be / max(e_np, floor)))
    tol = LATTICE_FP32_FACTOR * max(e_np, floor)
    assert e_be <= tol, (f"{what} (float32): max|got - float64| = {e_be:.3g} > "
                         f"{LATTICE_FP32_FACTOR} x max(NumPy float32 error {e_np:.3g}, "
                         f"ulp floor {floor:.3g})")


def check_lattice(be, case, dtype, need_grad=True, alias=True, stats=None):
    """alpha (with need_grad), log_like and the coefficients; beta is workspace. TDT with
    omega also runs its mixed-in RNN-T lattice (token values, columns 0 and 1)."""
    values = value_arrays(case, dtype)
    spans = [(0, case.B)] + ([(1, case.B)] if case.B > 1 else [])  # all, and a subset
    topos = [case.topo] + ([case.topo.rnnt_part()] if case.topo.omega else [])
    for topo in topos:
        for b0, b1 in spans:
            got = _compare_lattice(be, case, dtype, values, need_grad, alias, b0, b1, topo,
                                   stats)
    return got


def _compare_lattice(be, case, dtype, values, need_grad, alias, b0, b1, topo, stats):
    exp = run_lattice(REF, case, values, need_grad, False, b0, b1, topo)
    got = run_lattice(be, case, values, need_grad, alias, b0, b1, topo)
    checked = [("log_like", 1)] + ([("alpha", 0), ("coefs", 2)] if need_grad else [])
    what = f"lattice[{topo.variant}]"
    if dtype == "float32":  # tolerance derived from a float64 run of the same inputs
        exp64 = run_lattice(REF, case, values.astype(np.float64), need_grad, False, b0, b1,
                            topo)
        mag = max(float(np.abs(x[np.isfinite(x)]).max(initial=0.0))
                  for x in (exp64[0], exp64[1]))
        for name, k in checked:
            assert_float32_lattice(got[k], exp[k], exp64[k], mag, f"{what} {name} [{b0}:{b1}]",
                                   stats, "lattice float32 (abs err, ratio to NumPy fp32)")
    else:
        for name, k in checked:
            assert_close(got[k], exp[k], dtype, f"{what} {name} [{b0}:{b1}]", stats,
                         f"lattice {dtype}")
    assert np.all(got[1][:b0] == 9.0), "log_like written outside [b0, b1)"
    if not need_grad and not alias:
        assert np.all(got[2] == 9.0), "coefs written without need_grad"
    return got


def joint_inputs(case, dtype, H, seed=11):
    rng = np.random.default_rng(seed)
    enc = rng.standard_normal((case.B, case.T_max, H)).astype(np_dtype(dtype))
    pred = rng.standard_normal((case.B, case.U_max + 1, H)).astype(np_dtype(dtype))
    return enc, pred


def check_joint_forward(be, case, dtype, H, activation, chunks, stats=None):
    """h (n, ldh > H) in the storage dtype; columns >= H untouched."""
    xp = be.xp
    enc, pred = joint_inputs(case, dtype, H)
    encx, predx = to_xp(enc, xp), to_xp(pred, xp)
    dp, dpx = case.dplan(), case.dplan(xp)
    ldh = H + 3
    for row0, n in chunks:
        h = np.full((n, ldh), 7.0).astype(np_dtype(dtype))
        hx = to_xp(h.copy(), xp)
        REF.joint_forward(enc, pred, dp, row0, n, activation, h)
        be.joint_forward(encx, predx, dpx, row0, n, activation, hx)
        hx = to_np(hx)
        assert np.all(hx[:, H:].astype(np.float64) == 7.0), "joint_forward wrote past H"
        assert_close(hx, h, dtype, f"joint_forward[{row0}:{row0 + n}]", stats,
                     f"joint_forward {dtype}")


def check_joint_backward(be, case, dtype, H, activation, chunks, stats=None, out="same",
                         ldh=None):
    """joint_backward over a chunking into outputs of the storage dtype (``out="same"``),
    or float32 accumulators (``out="float32"``, 16-bit storage); the first chunk writes,
    later ones accumulate. Also a split-sample style call with ``out_b0``. ``ldh``: dh's
    leading dimension (default H + 2: rows off the 16-byte grid, the kernels' per-element
    path; a multiple of 8 with H one too: their 16-byte-word path)."""
    xp = be.xp
    rng = np.random.default_rng(12)
    enc, pred = joint_inputs(case, dtype, H)
    encx, predx = to_xp(enc, xp), to_xp(pred, xp)
    odt = np_dtype(dtype) if out == "same" else np.dtype(out)
    d_enc = rng.standard_normal((case.B, case.T_max, H)).astype(odt)
    d_pred = rng.standard_normal((case.B, case.U_max + 1, H)).astype(odt)
    d_encx, d_predx = to_xp(d_enc, xp), to_xp(d_pred, xp)
    dp, dpx = case.dplan(), case.dplan(xp)
    ldh = H + 2 if ldh is None else ldh
    for i, (row0, n) in enumerate(chunks):
        chunk = case.plan.chunk(row0, n)
        dh = rng.standard_normal((n, ldh)).astype(np_dtype(dtype))
        dhx = to_xp(dh, xp)
        REF.joint_backward(dh, enc, pred, dp, chunk, activation, d_enc, d_pred, 0, i > 0)
        be.joint_backward(dhx, encx, predx, dpx, chunk, activation, d_encx, d_predx, 0, i > 0)
        assert np.array_equal(to_np(dhx).view(np.uint8), dh.view(np.uint8)), "dh modified"
    key = f"joint_backward {dtype}"
    odn = dtype if out == "same" else out
    assert_close(to_np(d_encx), d_enc, odn, "joint_backward d_enc", stats, key)
    assert_close(to_np(d_predx), d_pred, odn, "joint_backward d_pred", stats, key)
    # one sample's rows into (1, ...) outputs addressed with out_b0 = b
    b = case.B - 1
    lo, hi = int(case.plan.offsets[b]), int(case.plan.offsets[b + 1])
    chunk = case.plan.chunk(lo, hi - lo)
    dh = rng.standard_normal((hi - lo, H)).astype(np_dtype(dtype))
    outs = [np.zeros((1,) + x.shape[1:], odt) for x in (d_enc, d_pred)]
    outsx = [to_xp(o.copy(), xp) for o in outs]
    REF.joint_backward(dh, enc, pred, dp, chunk, activation, *outs, b, False)
    be.joint_backward(to_xp(dh, xp), encx, predx, dpx, chunk, activation, *outsx, b, False)
    for name, a, e in zip(("d_enc", "d_pred"), outsx, outs):
        assert_close(to_np(a), e, odn, f"joint_backward {name} (out_b0={b})", stats, key)
    return d_enc, d_pred
