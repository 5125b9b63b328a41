"""Cost of the transducer variants relative to the standard RNN-T, one process, same inputs.

Times ``cutrans.transducer_loss`` (fused, one pass, reduction "mean") per variant on the
``cpu-small`` shape (B=16, T<=150, U<=40, V=256, H=256; float32) and prints the median time
and its ratio to ``variant="rnnt"`` measured in the same run. ``--backend numpy`` (default)
is the CPU reference path; ``--backend cupy`` on a GPU machine. ``--quick``: a smaller shape.

    python scripts/variant_cost.py [--backend numpy|cupy] [--repeat 3] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import cutrans

VARIANTS = {
    "rnnt": {},
    "rnnt + delay_penalty": {"delay_penalty": 0.01},
    "modified": {"variant": "modified"},
    "multiblank (2, 4, 8)": {"variant": "multiblank", "big_blank_durations": (2, 4, 8),
                             "sigma": 0.05},
    "tdt (0..4)": {"variant": "tdt", "durations": (0, 1, 2, 3, 4), "sigma": 0.05},
    "tdt (0..4), omega 0.1": {"variant": "tdt", "durations": (0, 1, 2, 3, 4), "sigma": 0.05,
                              "omega": 0.1},
    "rnnt (again: the noise)": {},
}


def inputs(xp, B, T, U, V, H, n_extra, seed=0):
    rng = np.random.default_rng(seed)
    t_len = rng.integers(T // 2, T + 1, B)
    u_len = np.minimum(rng.integers(U // 2, U + 1, B), t_len)  # "modified" needs U <= T
    enc = rng.standard_normal((B, T, H), dtype=np.float32)
    pred = rng.standard_normal((B, U + 1, H), dtype=np.float32)
    weight = (rng.standard_normal((V + n_extra, H)) / np.sqrt(H)).astype(np.float32)
    bias = np.zeros(V + n_extra, np.float32)
    targets = rng.integers(1, V - 8, (B, U))  # below the big blanks (V-2 ... V-4)
    return [xp.asarray(a) for a in (enc, pred, weight, bias)], targets, t_len, u_len


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.backend == "cupy":
        import cupy as xp
        sync = xp.cuda.Device().synchronize
    else:
        xp, sync = np, (lambda: None)
    B, T, U, V, H = (4, 60, 15, 64, 64) if args.quick else (16, 150, 40, 256, 256)
    print(f"shape B={B} T<={T} U<={U} V={V} H={H} float32, backend {args.backend}, "
          f"median of {args.repeat}")
    base = None
    for name, spec in VARIANTS.items():
        floats, targets, t_len, u_len = inputs(xp, B, T, U, V, H, len(spec.get("durations", ())))
        blank = V - 1 if spec.get("variant") == "multiblank" else 0
        times = []
        for i in range(args.repeat + 1):  # the first call warms up (kernel compilation)
            t0 = time.perf_counter()
            out = cutrans.transducer_loss(*floats, targets, t_len, u_len, blank=blank, **spec)
            sync()
            if i:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        base = base or med
        print(f"  {name:25s} {med * 1e3:9.1f} ms   x{med / base:5.2f}   loss "
              f"{float(out.loss):.4f}")


if __name__ == "__main__":
    main()
