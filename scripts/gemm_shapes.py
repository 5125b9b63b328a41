"""The fused op's three GEMMs alone, one chunk, in the layouts that decide cuBLAS's kernels.

    python scripts/gemm_shapes.py [--dtype bfloat16|float16|float32] [--rows N]
                                  [--device cuda|cpu] [--reps 10] [--json PATH]

Per chunk the fused op runs (``cutrans/_fused.py``): GEMM 1 ``z = h W_aug^T``, GEMM 2
``[dW | db] (+)= dz^T h`` (accumulating, compute dtype), GEMM 3 ``dh = dz W`` (written over
h's first H columns), through the same route as here (``backend.gemm``: cuBLAS ``GemmEx``
on CUDA). Each layout times them on one chunk of the LibriSpeech-like workload (default:
the rows of the largest chunk of the fused op's one-pass schedule at its default 512 MiB
budget; V=500, H=512; ``Vp = round8(V)`` = 504, ``Hp = round8(H + 1)`` = 520). Extents
below are the operands' contiguous ones; the chunk's rows are always the strided dimension.

* ``V, ld Vp, K=Hp`` -- runs C/D: V's extent 500 (1000 bytes in 16 bits: not a multiple
  of 16), the bias as a column of ones in h (GEMM 1's K and GEMM 2's N: Hp = 520);
* ``Vp, K=Hp`` -- the fused op now (V padded to a multiple of 8, zero rows in W_aug);
* ``Vp, K=Hp, GEMM 2 on H + db GEMV`` -- GEMM 2 split: dW from h's H columns (N = 512,
  leading dimensions Hp) and the bias gradient by a GEMV ``ones @ dz``, timed as ``db GEMV``
  (an orchestration change of ``_fused.chunk_backward``, not built);
* ``Vp, K=H, db GEMV`` -- the bias kept out of every GEMM (h and W without the bias column:
  K = H), plus the GEMV (the row kernels would add the bias; not built);
* ``V, ld V, K=H (roof of runs C/D)`` -- the bench's roof as runs C/D ran it: contiguous
  V=500 rows, dW in the storage dtype without accumulation, dh in its own array, no bias.

Columns: milliseconds per GEMM (median of ``--reps`` after warm-up calls of at least 50 ms;
CUDA events on CUDA, the host clock on the CPU), their sum, and TFLOP/s of the useful work
``3 * 2 * rows * H * V`` over that sum. Before it prints, the script checks that every
layout computed the same z, dW, dh and bias gradient on the shared region (zero padding,
bias 0; z and dh on their first CHECK_ROWS rows), that the bias gradient is z's column sum
(chunks of at most CHECK_ROWS rows), and that the padding stayed zero. On the CPU (NumPy
backend) it is a smoke test of the script, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np

from cutrans import _fused
from cutrans._dtypes import compute_dtype
from cutrans._fused import round8
from cutrans._plan import make_plan
from cutrans._topology import Topology
from cutrans.bench.accuracy import np_dtype
from cutrans.bench.workloads import WORKLOADS, lattice_sizes

WARMUP_SECONDS = 0.05
CHECK_ROWS = 4096  # rows of z and dh compared on the host


@dataclass(frozen=True)
class Layout:
    """``v``: V's extent ("V" or "Vp"); ``ld``: the leading dimension of z ("V" or "Vp");
    ``bias_col``: h and W carry the bias column (width Hp, else H); ``g2_on_h``: GEMM 2 over
    h's first H columns, the bias gradient by a GEMV; ``roof``: runs C/D's roof (dW in the
    storage dtype, no accumulation, dh in its own contiguous array)."""

    v: str
    ld: str
    bias_col: bool
    g2_on_h: bool = False
    roof: bool = False

    @property
    def gemv(self) -> bool:
        return self.g2_on_h


LAYOUTS = {
    "V, ld Vp, K=Hp (runs C/D)": Layout("V", "Vp", True),
    "Vp, K=Hp (now)": Layout("Vp", "Vp", True),
    "Vp, K=Hp, GEMM 2 on H + db GEMV": Layout("Vp", "Vp", True, g2_on_h=True),
    "Vp, K=H, db GEMV (bias apart)": Layout("Vp", "Vp", False, g2_on_h=True),
    "V, ld V, K=H (roof of runs C/D)": Layout("V", "V", False, roof=True),
}


def _backend(device: str):
    if device == "cuda":
        import cupy

        from cutrans.backends import _cublas

        return cupy, _cublas.gemm
    from cutrans.backends import NumpyBackend

    return np, NumpyBackend().gemm


def default_rows(dtype: str) -> int:
    """Rows of the largest chunk of the fused op's one-pass schedule on librispeech-100 at
    its default 512 MiB budget."""
    sizes = lattice_sizes(WORKLOADS["librispeech-100"])
    B, T, U, V, H = (sizes[k] for k in ("batch", "frames", "labels", "vocab", "hidden"))
    dt = np.float16 if np.dtype(np_dtype(dtype)).itemsize == 2 else np.float32
    f = _fused.FusedInputs(np.empty((B, T, H), dt), np.empty((B, U + 1, H), dt),
                           np.empty((V, H), dt), np.empty(V, dt), 0, Topology(), 0.0, 0.0)
    plan = make_plan(np.array(sizes["enc_lengths"]), np.array(sizes["target_lengths"]))
    sched, _ = _fused.one_pass_schedule(f, plan, 512 << 20, False,
                                        _fused.fixed_bytes(f, True, True), False)
    return sched.chunk_rows


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


@dataclass
class Buffers:
    h0: object  # host copy of h, restored before each rep (GEMM 3 writes dh over h)
    h: object  # (rows, H or Hp) = [h | 1 | 0..] or [h]
    w: object  # (Vx, H or Hp) = [W | 0 | 0..], rows V..Vx zero
    z: object  # (rows, Vx), leading dimension V or Vp
    d_w: object  # (Vx, H or Hp), compute dtype (roof: storage dtype)
    dh: object  # (rows, H): h's first H columns (roof: its own array)
    d_b: object  # (1, Vx), compute dtype (the GEMV layouts)
    ones: object  # (1, rows), storage dtype (the GEMV layouts)


def random_inputs(rows: int, H: int, V: int, seed: int = 0):
    """Host float32 values of h (rows, H) and W (V, H), shared by the layouts."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, H), dtype=np.float32),
            rng.standard_normal((V, H), dtype=np.float32) / np.float32(np.sqrt(H)))


def layout_buffers(xp, h_rand, w_rand, dtype, lay: Layout) -> Buffers:
    (rows, H), V = h_rand.shape, w_rand.shape[0]
    Hp, Vp = round8(H + 1), round8(V)
    vx = V if lay.v == "V" else Vp
    ldv = V if lay.ld == "V" else Vp
    hw = Hp if lay.bias_col else H
    cdt = np.dtype(dtype) if lay.roof else compute_dtype(np.dtype(dtype))
    h_host = np.zeros((rows, hw), np.float32)
    h_host[:, :H] = h_rand
    if lay.bias_col:
        h_host[:, H] = 1.0  # the bias column (the bias itself is 0 here)
    w_host = np.zeros((vx, hw), np.float32)  # rows V..vx: zero
    w_host[:V, :H] = w_rand
    h0 = xp.asarray(h_host.astype(dtype))
    h = h0.copy()
    dh = xp.zeros((rows, H), dtype=dtype) if lay.roof else h[:, :H]
    return Buffers(h0, h, xp.asarray(w_host.astype(dtype)),
                   xp.zeros((rows, ldv), dtype=dtype)[:, :vx], xp.zeros((vx, hw), dtype=cdt),
                   dh, xp.zeros((1, vx), dtype=cdt),
                   xp.ones((1, rows), dtype=dtype) if lay.gemv else None)


def _gemms(gemm, b: Buffers, lay: Layout, H: int, timer):
    """The layout's GEMMs on ``b``; returns the marks around each."""
    marks = [timer.mark()]
    gemm(b.h, b.w.T, b.z)
    marks.append(timer.mark())
    if lay.roof:
        gemm(b.z.T, b.h, b.d_w)
    elif lay.g2_on_h:
        gemm(b.z.T, b.h[:, :H], b.d_w[:, :H], accumulate=True)
    else:
        gemm(b.z.T, b.h, b.d_w, accumulate=True)
    marks.append(timer.mark())
    gemm(b.z, b.w[:, :H], b.dh)
    marks.append(timer.mark())
    if lay.gemv:
        gemm(b.ones, b.z, b.d_b, accumulate=True)
        marks.append(timer.mark())
    return marks


def time_layout(xp, gemm, h_rand, w_rand, dtype, lay: Layout, reps):
    """(ms per GEMM: g1, g2, g3[, db GEMV], host float64 results: z, dW, dh, db or None,
    z's and dW's padding)."""
    b = layout_buffers(xp, h_rand, w_rand, dtype, lay)
    (rows, H), V = h_rand.shape, w_rand.shape[0]
    timer = _Timer(xp)

    def reset():  # outside the timed region
        b.d_w[...] = 0
        b.d_b[...] = 0
        if not lay.roof:
            b.h[...] = b.h0

    t_end = time.perf_counter() + WARMUP_SECONDS
    while True:  # warm-up: at least one call and WARMUP_SECONDS (clocks up, caches)
        reset()
        marks = _gemms(gemm, b, lay, H, timer)
        timer.seconds(marks[0], marks[-1])  # waits for the GPU
        if time.perf_counter() >= t_end:
            break
    times = []
    for _ in range(reps):
        reset()
        marks = _gemms(gemm, b, lay, H, timer)
        times.append([timer.seconds(x, y) * 1e3 for x, y in zip(marks, marks[1:])])
    ms = [statistics.median(col) for col in zip(*times)]
    host = (lambda a: np.asarray(a, np.float64)) if xp is np else \
        (lambda a: xp.asnumpy(a).astype(np.float64))
    z = host(b.z[:CHECK_ROWS])
    if lay.gemv:
        db = host(b.d_b)[0, :V]
    elif lay.bias_col:
        db = host(b.d_w[:V, H])
    else:
        db = None
    return ms, {"z": z[:, :V], "dW": host(b.d_w[:V, :H]), "dh": host(b.dh[:CHECK_ROWS]),
                "db": db, "z_pad": z[:, V:], "dW_pad": host(b.d_w[V:]),
                "z_colsum": z[:, :V].sum(0) if rows <= CHECK_ROWS else None}


def check_results(results: dict, dtype: str) -> None:
    """Every layout's z, dW, dh and bias gradient against the first's, within the dtype's
    rounding (the GEMMs' summation order may differ between kernels); each bias gradient
    against its z's column sum (chunks of at most CHECK_ROWS rows: z and dh are compared
    on their first CHECK_ROWS rows); the padding zero."""
    tol = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}[dtype]

    def rel(a, b):
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    first, (_, ref) = next(iter(results.items()))
    for name, (_, got) in results.items():
        for what in ("z", "dW", "dh"):
            err = rel(got[what], ref[what])
            if not err <= tol:
                raise AssertionError(f"{name}: {what} differs from {first}'s by {err:.3g} "
                                     f"(relative to its max; tolerance {tol:g})")
        if got["db"] is not None:
            for want, what in ((ref["db"], f"{first}'s db"), (got["z_colsum"], "z's column sum")):
                if want is not None and not rel(got["db"], want) <= tol:
                    raise AssertionError(f"{name}: db differs from {what}")
        if got["z_pad"].any() or got["dW_pad"].any():
            raise AssertionError(f"{name}: the padding of z or dW is not zero")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--rows", type=int, default=None,
                    help="rows of the chunk (default: the fused op's largest at 512 MiB)")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    for name in ("rows", "hidden", "vocab"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    sizes = lattice_sizes(WORKLOADS["librispeech-100"])
    H, V = a.hidden or sizes["hidden"], a.vocab or sizes["vocab"]
    rows = a.rows or default_rows(a.dtype)
    xp, gemm = _backend(a.device)
    dtype = np_dtype(a.dtype)
    h_rand, w_rand = random_inputs(rows, H, V)
    results = {name: time_layout(xp, gemm, h_rand, w_rand, dtype, lay, a.reps)
               for name, lay in LAYOUTS.items()}
    check_results(results, a.dtype)
    useful = 3 * 2 * rows * H * V
    print(f"# the fused op's GEMMs, one chunk of {rows:,} rows, H={H} (Hp={round8(H + 1)}), "
          f"V={V} (Vp={round8(V)}), {a.dtype}, {a.device}"
          + (" (CPU: a smoke test, not a measurement)" if a.device == "cpu" else ""))
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
