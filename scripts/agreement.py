"""Print the measured agreement of cutrans (a backend) with the independent oracles.

    python scripts/agreement.py [--backend numpy|emulated|cupy]

Rows: oracle, dtype, quantity, max abs error, max rel error (on random shapes, fixed seeds).

    python scripts/agreement.py --tolerances [pytest paths...]

re-measures the tolerance tables of tests/tolerances.py: runs the tests that use them
(default: TOLERANCE_TESTS below) with ``CUTRANS_TOL_REPORT`` set (each comparison records
its error instead of asserting) and prints, per table/dtype/quantity, the measured error,
the suggested tolerance (MARGIN x measured, rounded up, at least the entry's floor) and
the current one. Paste the suggestions and the measured numbers into the tables.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import cutrans  # noqa: E402
from oracles import brute_force_loss, torch_fused_losses  # noqa: E402


def err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    return d.max(), (d / np.maximum(np.abs(b), 1e-3)).max()


def to_xp(backend, x):
    if backend != "cupy":
        return x
    import cupy
    return cupy.asarray(x)


def host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOLERANCE_TESTS = ["tests/core/test_fused.py", "tests/core/test_loss_oracles.py",
                   "tests/interop/test_torch_rnnt.py", "tests/interop/test_torch_fused.py",
                   "tests/interop/test_jax.py", "tests/fuzz"]


def round_up(x: float) -> float:
    """Round up to one significant digit (0.00043 -> 0.0005)."""
    if x <= 0:
        return 0.0
    e = math.floor(math.log10(x))
    return math.ceil(x / 10 ** e - 1e-9) * 10 ** e


def measure_tolerances(paths, fuzz_profile):
    import tolerances as tl
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "tol.json")
        env = dict(os.environ, CUTRANS_TOL_REPORT=report, CUTRANS_FUZZ=fuzz_profile)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
        print("$", " ".join(cmd), f"(CUTRANS_TOL_REPORT, CUTRANS_FUZZ={fuzz_profile})",
              flush=True)
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        with open(report) as f:
            measured = json.load(f)
    print(f"pytest exit status {rc}; margin {tl.MARGIN}, floors {tl.FLOOR} (float32's for "
          f"16-bit {sorted(tl.FLOAT32_QUANTITIES)})")
    print(f"{'table/dtype/quantity':34} {'measured':>10} {'suggested':>10} {'current':>10}")
    for key in sorted(measured):
        table, dtype, q = key.split("/")
        m = measured[key]
        sug = max(tl.tolerance_floor(table, dtype, q), round_up(tl.MARGIN * m))
        cur = tl.TABLES.get(table, {}).get(dtype, {}).get(q)
        flag = "" if cur is None or m <= cur else "  <-- measured > current"
        print(f"{key:34} {m:10.2e} {sug:10.0e} {cur if cur is not None else '-':>10}{flag}")
    return rc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--tolerances", action="store_true",
                    help="re-measure the tables of tests/tolerances.py (see the docstring)")
    ap.add_argument("--fuzz-profile", default="long",
                    help="CUTRANS_FUZZ profile for the fuzz tests when measuring (default long)")
    ap.add_argument("paths", nargs="*", help="pytest paths for --tolerances")
    opts = ap.parse_args()
    if opts.tolerances:
        sys.exit(measure_tolerances(opts.paths or TOLERANCE_TESTS, opts.fuzz_profile))
    be = opts.backend
    import torch
    from warprnnt_numba.rnnt_loss.rnnt_pytorch import rnnt_loss as warp
    rows = []
    rng = np.random.default_rng(0)
    # brute force (float64 and float32 inputs)
    for dt in ("float32", "float64"):
        worst = [0.0, 0.0]
        for _ in range(20):
            T, U, V = rng.integers(1, 5), rng.integers(0, 4), rng.integers(2, 6)
            lg = rng.standard_normal((1, T, U + 1, V)).astype(dt)
            tg = rng.integers(1, V, size=(1, max(U, 0))).astype(np.int32)
            got = host(cutrans.rnnt_loss(to_xp(be, lg), to_xp(be, tg), np.array([T]),
                                         np.array([U]), reduction="sum", backend=be))
            want = brute_force_loss(lg[0].astype(np.float64), tg[0], T, U, 0)
            worst = np.maximum(worst, err(got, want))
        rows.append(("brute-force paths", dt, "loss", *worst))
    # warprnnt-numba: loss and logits gradient, with FastEmit and clamp
    for dt in ("float32", "float64"):
        for lam, cl in ((0.0, None), (0.3, None), (0.0, 0.05)):
            B, T, U, V = 4, 30, 8, 40
            lg = rng.standard_normal((B, T, U + 1, V)).astype(dt)
            tg = rng.integers(1, V, size=(B, U)).astype(np.int32)
            tl, ul = np.full(B, T, np.int32), np.full(B, U, np.int32)
            loss, g = cutrans.rnnt_loss(to_xp(be, lg), to_xp(be, tg), tl, ul, reduction="sum",
                                        fastemit_lambda=lam, clamp=cl, return_grad=True,
                                        backend=be)
            x = torch.tensor(lg.astype(np.float64), requires_grad=True)
            wl = warp(x, torch.tensor(tg), torch.tensor(tl), torch.tensor(ul), blank=0,
                      reduction="sum", fastemit_lambda=lam, clamp=cl or 0.0)
            wl.backward()
            tag = f"lambda={lam} clamp={cl}"
            rows.append(("warprnnt-numba (fp64)", dt, f"loss {tag}", *err(host(loss), wl.item())))
            rows.append(("warprnnt-numba (fp64)", dt, f"grad {tag}", *err(host(g), x.grad.numpy())))
    # naive torch autograd of the batched fused computation
    for dt in ("float16", "bfloat16", "float32", "float64"):
        if dt == "bfloat16":
            import ml_dtypes
            npdt = ml_dtypes.bfloat16
        else:
            npdt = np.dtype(dt)
        B, T, U, V, H = 3, 12, 5, 20, 16
        xs = [rng.standard_normal(s).astype(npdt) for s in ((B, T, H), (B, U + 1, H), (V, H), (V,))]
        tg = rng.integers(1, V, size=(B, U))
        tl, ul = np.array([12, 9, 4]), np.array([5, 3, 0])
        out = cutrans.transducer_loss(*[to_xp(be, x) for x in xs], to_xp(be, tg), tl, ul,
                                      reduction="sum", max_workspace_bytes=64 << 10, backend=be)
        ts = [torch.tensor(x.astype(np.float64), requires_grad=True) for x in xs]
        ref = torch_fused_losses(*ts, tg, tl, ul, "tanh", 0).sum()
        ref.backward()
        rows.append(("torch autograd (fp64)", dt, "fused loss", *err(host(out.loss), ref.item())))
        for name, g, t in zip(("enc", "pred", "weight", "bias"), out.grads, ts):
            rows.append(("torch autograd (fp64)", dt, f"grad {name}",
                         *err(host(g).astype(np.float64), t.grad.numpy())))
    print(f"backend: {be}")
    print(f"{'oracle':24} {'dtype':9} {'quantity':28} {'max abs':>10} {'max rel':>10}")
    for o, dt, q, a, r in rows:
        print(f"{o:24} {dt:9} {q:28} {a:10.2e} {r:10.2e}")


if __name__ == "__main__":
    main()
