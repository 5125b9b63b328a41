"""The fused op's three GEMMs alone, one chunk, in the layouts that decide cuBLAS's kernels.

    python scripts/gemm_shapes.py [--dtype bfloat16|float16|float32] [--rows N]
                                  [--device cuda|cpu] [--reps 10] [--json PATH]

Per chunk the fused op runs (``cutrans/_fused.py``): GEMM 1 ``z = h W_aug^T``, GEMM 2
``dW (+)= dz^T h`` (accumulating, compute dtype), GEMM 3 ``dh = dz W``, through the same
route as here (``backend.gemm``: cuBLAS ``GemmEx`` on CUDA). Each layout times them on one
chunk of the LibriSpeech-like workload (default: the rows of the fused op's largest chunk at
its default 512 MiB budget; V=500, H=512; ``Vp = round8(V)`` = 504, ``Hp = round8(H + 1)``
= 520):

* ``V, ld Vp, K=Hp`` -- runs C/D: V's extent 500 (1000 bytes in 16 bits: not a multiple of
  16), the bias as a column of ones in h (K = Hp = 520);
* ``Vp, K=Hp`` -- the fused op now (V padded to a multiple of 8, zero rows in W_aug);
* ``Vp, K=H`` -- the bias kept out of the GEMMs (K = H): what the bias column costs; the
  bias gradient then needs a GEMV ``ones @ dz``, timed as ``db GEMV``;
* ``V, ld V, K=H`` -- the bench roof of runs C/D (contiguous V=500 rows).

Columns: milliseconds per GEMM (median of ``--reps`` after a warm-up; CUDA events on
CUDA, the host clock on the CPU), their sum, and TFLOP/s of the useful work
``3 * 2 * rows * H * V`` over that sum. Every layout computes the same products on the
shared region (zero padding, bias 0): the script checks that before it prints. On the CPU
(NumPy backend) it is a smoke test of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from cutrans._dtypes import compute_dtype
from cutrans._fused import round8
from cutrans.bench.accuracy import np_dtype
from cutrans.bench.methods import Method, fused_chunk
from cutrans.bench.workloads import WORKLOADS, lattice_sizes

# name -> (V extent, leading dimension of V-wide arrays: "pad" = round8(V), K width)
LAYOUTS = {
    "V, ld Vp, K=Hp (runs C/D)": ("V", "pad", "Hp"),
    "Vp, K=Hp (now)": ("Vp", "pad", "Hp"),
    "Vp, K=H (bias apart)": ("Vp", "pad", "H"),
    "V, ld V, K=H (roof of runs C/D)": ("V", "V", "H"),
}


def _backend(device: str):
    if device == "cuda":
        import cupy

        from cutrans.backends import _cublas

        return cupy, _cublas.gemm
    from cutrans.backends import NumpyBackend

    return np, NumpyBackend().gemm


class _Timer:
    def __init__(self, xp):
        self.xp = xp

    def mark(self):
        if self.xp is np:
            return time.perf_counter()
        ev = self.xp.cuda.Event()
        ev.record()
        return ev

    def seconds(self, a, b) -> float:
        if self.xp is np:
            return b - a
        b.synchronize()
        return self.xp.cuda.get_elapsed_time(a, b) / 1e3


def layout_arrays(xp, rows: int, H: int, V: int, dtype, name: str, rng):
    """h (rows, K) = [h | 1 | 0] (or [h | 0]), w (Vx, K) = [W | 0 | 0] with zero rows past V,
    z (rows, Vx), dW (Vx, K) in the compute dtype; views of buffers with the layout's
    leading dimensions."""
    vx, ld_name, k_name = LAYOUTS[name]
    Hp, Vp = round8(H + 1), round8(V)
    vx = V if vx == "V" else Vp
    ldv = Vp if ld_name == "pad" else V
    k = Hp if k_name == "Hp" else H
    cdt = compute_dtype(np.dtype(dtype))
    h_host = np.zeros((rows, k), np.float32)
    h_host[:, :H] = rng.standard_normal((rows, H), dtype=np.float32)
    if k > H:
        h_host[:, H] = 1.0  # the bias column (the bias itself is 0 here)
    w_host = np.zeros((vx, k), np.float32)  # rows V..vx: zero
    w_host[:V, :H] = rng.standard_normal((V, H), dtype=np.float32) / np.sqrt(H)
    h = xp.asarray(h_host.astype(dtype))
    w = xp.asarray(w_host.astype(dtype))
    z = xp.zeros((rows, ldv), dtype=dtype)[:, :vx]
    d_w = xp.zeros((vx, k), dtype=cdt)
    return h, w, z, d_w


def time_layout(xp, gemm, rows, H, V, dtype, name, reps, rng):
    """(ms per GEMM: g1, g2, g3[, db GEMV], host copies of z[:, :V], dW[:V, :H], dh[:, :H])."""
    h, w, z, d_w = layout_arrays(xp, rows, H, V, dtype, name, rng)
    k = h.shape[1]
    ones = xp.ones((1, rows), dtype=dtype) if k == H else None
    d_b = xp.zeros((1, z.shape[1]), dtype=d_w.dtype)
    dh = xp.zeros((rows, H), dtype=dtype)
    timer = _Timer(xp)
    times = []
    for rep in range(reps + 1):  # the first: warm-up
        d_w[...] = 0
        marks = [timer.mark()]
        gemm(h, w.T, z)
        marks.append(timer.mark())
        gemm(z.T, h, d_w, accumulate=True)
        marks.append(timer.mark())
        gemm(z, w[:, :H], dh)
        marks.append(timer.mark())
        if ones is not None:
            gemm(ones, z, d_b)
            marks.append(timer.mark())
        if rep:
            times.append([timer.seconds(a, b) * 1e3 for a, b in zip(marks, marks[1:])])
    ms = [statistics.median(col) for col in zip(*times)]
    host = xp.asnumpy if xp is not np else np.asarray
    return ms, (host(z[:, :V]).astype(np.float64), host(d_w[:V, :H]).astype(np.float64),
                host(dh).astype(np.float64))


def check_same_products(results: dict, dtype: str) -> None:
    """Every layout's z, dW, dh against the first's, within the dtype's rounding (the
    GEMMs' summation order may differ between kernels)."""
    tol = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}[dtype]
    first, ref = next(iter(results.items()))
    for name, (_, got) in results.items():
        for what, a, b in zip(("z", "dW", "dh"), got, ref[1]):
            err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
            if not err <= tol:
                raise AssertionError(f"{name}: {what} differs from {first}'s by {err:.3g} "
                                     f"(relative to its max; tolerance {tol:g})")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--rows", type=int, default=None,
                    help="rows of the chunk (default: the fused op's largest chunk at 512 MiB)")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    sizes = lattice_sizes(WORKLOADS["librispeech-100"])
    H, V = a.hidden or sizes["hidden"], a.vocab or sizes["vocab"]
    rows = a.rows or fused_chunk(sizes, Method("fused", budget=512 << 20), a.dtype)[0]
    xp, gemm = _backend(a.device)
    dtype = np_dtype(a.dtype)
    results = {name: time_layout(xp, gemm, rows, H, V, dtype, name, a.reps,
                                 np.random.default_rng(0)) for name in LAYOUTS}
    check_same_products(results, a.dtype)
    useful = 3 * 2 * rows * H * V
    print(f"# the fused op's GEMMs, one chunk of {rows:,} rows, H={H} (Hp={round8(H + 1)}), "
          f"V={V} (Vp={round8(V)}), {a.dtype}, "
          f"{a.device}" + (" (CPU: a smoke test, not a measurement)" if a.device == "cpu"
                           else ""))
    print("| layout | GEMM 1 (z) | GEMM 2 (dW) | GEMM 3 (dh) | db GEMV | sum | useful TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    report = {"rows": rows, "hidden": H, "vocab": V, "dtype": a.dtype, "device": a.device,
              "layouts": {}}
    for name, (ms, _) in results.items():
        total = sum(ms)
        gemv = f"{ms[3]:.3f}" if len(ms) > 3 else "-"
        print(f"| {name} | {ms[0]:.3f} | {ms[1]:.3f} | {ms[2]:.3f} | {gemv} | {total:.3f} | "
              f"{useful / total / 1e9:.3g} |")
        report["layouts"][name] = {"ms": ms, "sum_ms": total,
                                   "useful_tflops": useful / total / 1e9}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return report


if __name__ == "__main__":
    main()
