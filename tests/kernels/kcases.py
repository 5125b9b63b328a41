"""Shared cases for the kernel tests: random plans, chunkings, tolerances, comparisons.

Used by tests/kernels (emulated backend) and tests/gpu (CuPy backend): every helper takes
the backend under test and runs the NumPy reference backend on the same (host) inputs.
"""
from __future__ import annotations

import numpy as np

from cutrans._plan import make_plan, to_device
from cutrans.backends import NumpyBackend, RowLayout
from cutrans._dtypes import DTYPES
from optional_deps import dtype_params

BF16 = DTYPES["bfloat16"][0]


STORAGE = dtype_params("float16", "bfloat16", "float32", "float64")
LOW = dtype_params("float16", "bfloat16")
COMPUTE = ["float32", "float64"]

#: (atol, rtol) of kernel results vs the NumPy backend, per dtype of the compared array.
#: Both compute in float32 (float64 for float64); differences come from summation order,
#: libm vs CUDA exp/log, and one rounding of 16-bit outputs. Measured, the largest max abs /
#: max rel error over the ops (rel over entries above 1e-6; its maxima sit on small entries,
#: which atol covers; float32 without the lattice, which has its own rule in kops.py); per
#: op: ``CUTRANS_GPU_ERROR_REPORT`` of tests/gpu, ``CUTRANS_ERROR_REPORT`` of tests/kernels
#: with ``-n 0``:
#:   H100, run E of BENCHMARKS.md (its report): float16 2.0e-3 / 5.0e-2, bfloat16 3.1e-2
#:   (one rounding of an entry in [4, 8)) / 9.2e-3, float32 1.5e-5 / 6.3e-3, float64
#:   1.1e-13 / 2.0e-11;
#:   emulated, 2026-11-27: float16 3.9e-3 / 5.8e-3, bfloat16 7.8e-3 / 7.4e-3, float32
#:   3.8e-6 / 1.3e-3, float64 2.8e-14 / 2.3e-12.
#: The larger of the two sets each bound (the GPU's, but for float16's max abs).
TOL = {
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
    "float32": (2e-5, 2e-5),
    "float64": (1e-11, 1e-11),
}

REF = NumpyBackend()


def np_dtype(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def cdt(name):
    return np.float64 if name == "float64" else np.float32


def random_lengths(rng, B, T_max, U_max, *, force_edges=True):
    """Lengths with T_b in [1, T_max], U_b in [0, U_max]; includes T_b = 1 and U_b = 0."""
    T = rng.integers(1, T_max + 1, B)
    U = rng.integers(0, U_max + 1, B)
    if force_edges and B >= 3:
        T[0], U[1] = 1, 0
        T[2], U[2] = T_max, U_max
    return T.astype(np.int64), U.astype(np.int64)


#: Topologies of the kernel tests (``Case(..., topo=name)``): every code path of the row
#: kernels (lean / general) and of the lattices (specialised RNN-T / arc table).
TOPOLOGIES = {
    "rnnt": {},
    "delay": dict(delay_penalty=0.25),
    "modified": dict(variant="modified"),
    "multiblank": dict(variant="multiblank", big_blank_durations=(2, 3), sigma=0.05),
    "tdt": dict(variant="tdt", durations=(0, 1, 2, 4)),
    "tdt-omega": dict(variant="tdt", durations=(0, 1, 3), sigma=0.05, omega=0.3),
}


class Case:
    """A random batch: host plan, targets, device plan (for ``xp``), topology.

    ``V``: token logits per row (TDT rows have ``n_logits = V + D``); ``topo``: a key of
    ``TOPOLOGIES``; ``blank``: the standard blank's id (random if None; multi-blank: the
    largest id, its big blanks just below)."""

    def __init__(self, seed, B, T_max, U_max, V, blank=None, topo="rnnt"):
        from cutrans._topology import make_topology
        rng = self.rng = np.random.default_rng(seed)
        self.T, self.U = random_lengths(rng, B, T_max, U_max)
        args = dict(TOPOLOGIES[topo])
        if args.get("variant") == "modified":
            self.U = np.minimum(self.U, self.T)  # one label per frame at most
        n_dur = len(args.get("durations", ()))
        if blank is None:
            blank = V - 1 if args.get("variant") == "multiblank" else int(rng.integers(0, V))
        self.topo = make_topology(args.pop("variant", "rnnt"), V + n_dur, blank, **args)
        self.B, self.T_max, self.U_max, self.V = B, T_max, U_max, V
        self.n_logits = V + n_dur
        self.blank = self.topo.blanks[0]
        labels = [k for k in range(V) if k not in self.topo.blanks]
        self.targets = rng.choice(labels, size=(B, max(U_max, 0))).astype(np.int32)
        self.plan = make_plan(self.T, self.U)
        self.R = self.plan.rows

    def dplan(self, xp=np):
        return to_device(self.plan, xp.asarray(self.targets), xp)

    def chunkings(self):
        """Chunk lists: whole, splits inside one sample, chunks spanning several samples."""
        R, off = self.R, self.plan.offsets
        out = [[(0, R)]]
        if R > 1:
            mid = int(off[-2] + max(1, (off[-1] - off[-2]) // 2)) if off[-1] - off[-2] > 1 else R // 2
            mid = min(max(mid, 1), R - 1)
            out.append([(0, mid), (mid, R - mid)])  # split inside one sample
        n = max(1, R // 3 + 1)
        out.append([(r, min(n, R - r)) for r in range(0, R, n)])  # spans samples
        out.append([(r, min(7, R - r)) for r in range(0, R, 7)])
        return out

    def logits(self, dtype, layout="packed", scale=3.0, pad_value=np.nan):
        """Logits in ``dtype``: packed (R, n_logits) or padded (B, T_max, U_max+1, n_logits),
        NaN padding."""
        rng, n = self.rng, self.n_logits
        if layout == "packed":
            z = rng.standard_normal((self.R, n)) * scale
        else:
            z = np.full((self.B, self.T_max, self.U_max + 1, n), pad_value)
            for b in range(self.B):
                T, U = self.T[b], self.U[b]
                z[b, :T, :U + 1] = rng.standard_normal((T, U + 1, n)) * scale
        return z.astype(np_dtype(dtype))

    def layout(self, z, layout, row0):
        if layout == "packed":
            return RowLayout(packed=True, ld=self.n_logits)
        _, T, U1, V = z.shape
        return RowLayout(packed=False, sb=T * U1 * V, st=U1 * V, su=V)

    def chunk_view(self, z, layout, row0, n):
        return z[row0:row0 + n] if layout == "packed" else z


def to_xp(x, xp):
    """Host array -> ``xp`` array (CuPy >= 14 holds bfloat16 when ml_dtypes is installed)."""
    return x if xp is np else xp.asarray(x)


def to_np(x, dtype=None):
    """``xp`` array or scalar -> NumPy."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    return x.get()


def assert_close(actual, expected, dtype, what, stats=None, key=None):
    """Compare with TOL[dtype]; record (max abs, max rel) error into ``stats[key or dtype]``."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    with np.errstate(invalid="ignore"):
        same_inf = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.where(same_inf, 0.0, np.abs(a - e))
        rel = diff / np.maximum(np.abs(e), 1e-30)
    if stats is not None and diff.size:
        key = key or dtype
        old = stats.get(key, (0.0, 0.0))
        finite = np.isfinite(e) & (np.abs(e) > 1e-6)
        stats[key] = (max(old[0], float(diff.max())),
                        max(old[1], float(rel[finite].max()) if finite.any() else 0.0))
    atol, rtol = TOL[dtype]
    bad = ~(diff <= atol + rtol * np.abs(np.where(np.isfinite(e), e, 0)))
    if bad.any():
        i = np.unravel_index(np.flatnonzero(bad)[0], bad.shape)
        raise AssertionError(f"{what} ({dtype}): {int(bad.sum())} of {bad.size} differ; first at "
                             f"{i}: {a[i]!r} vs {e[i]!r} (atol {atol}, rtol {rtol}); max abs "
                             f"diff {float(diff.max())}")
