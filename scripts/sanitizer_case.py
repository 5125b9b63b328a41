"""A small case that launches every kernel instantiation family once on the GPU.

Run under compute-sanitizer (memcheck, racecheck, synccheck) by scripts/gpu-suite:
    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/sanitizer_case.py
Covers block sizes 32/128/256 (small and large V, H, lattices), packed and padded logits,
float16/bfloat16/float32/float64 logits, the fused op with chunks that split samples, and
the transducer variants (general row kernels, arc-table lattice).
Exits non-zero if a result disagrees with the NumPy backend.
"""
from __future__ import annotations

import sys

import numpy as np

import cupy
import cutrans
from cutrans._fused import workspace_bytes


def logits_case(rng, B, T, U, V, dtype):
    t_len = rng.integers(1, T + 1, B).astype(np.int32)
    u_len = rng.integers(0, U + 1, B).astype(np.int32)
    t_len[0], u_len[0] = T, U
    z = rng.standard_normal((B, T, U + 1, V)).astype(dtype)
    tg = rng.integers(1, V, (B, U)).astype(np.int32)
    return z, tg, t_len, u_len


def main() -> int:
    rng = np.random.default_rng(0)
    dtypes = [np.float32, np.float64, np.float16]
    try:
        import ml_dtypes
        dtypes.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    bad = 0
    for V, T, U in ((5, 4, 3), (300, 6, 4), (1000, 40, 70)):
        for dt in dtypes:
            host = logits_case(rng, 3, T, U, V, dt)
            for layout in ("padded", "packed"):
                args = host
                if layout == "packed":
                    z, tg, tl, ul = host
                    rows = [z[b, :tl[b], :ul[b] + 1].reshape(-1, V) for b in range(3)]
                    args = (np.concatenate(rows), tg, tl, ul)
                ref = cutrans.rnnt_loss(*args, layout=layout, fastemit_lambda=0.1, clamp=0.5,
                                        return_grad=True, backend="numpy")
                got = cutrans.rnnt_loss(*(cupy.asarray(a) for a in args), layout=layout,
                                        fastemit_lambda=0.1, clamp=0.5, return_grad=True)
                # (loss rtol, gradient atol) per storage dtype; half gradients are stored
                # in 16 bits, so they differ by a rounding of the (float32) values
                ltol, gtol = {8: (1e-9, 1e-12), 4: (1e-5, 1e-5)}.get(np.dtype(dt).itemsize,
                                                                      (1e-5, 1e-2))
                if not np.allclose(float(got[0]), float(ref[0]), rtol=ltol):
                    print("MISMATCH loss", V, dt, layout, float(got[0]), float(ref[0]))
                    bad += 1
                g_got = got[1].get().astype(np.float64)
                g_ref = ref[1].astype(np.float64)
                if not np.allclose(g_got, g_ref, rtol=gtol, atol=gtol):
                    print("MISMATCH logits grad", V, dt, layout,
                          float(np.abs(g_got - g_ref).max()))
                    bad += 1
    for H, act in ((16, "tanh"), (300, "relu"), (700, "identity")):
        for dt in (np.float32, np.float64):
            B, T, U, V = 3, 7, 5, 11
            enc = rng.standard_normal((B, T, H)).astype(dt)
            pred = rng.standard_normal((B, U + 1, H)).astype(dt)
            w = (rng.standard_normal((V, H)) / np.sqrt(H)).astype(dt)
            bias = rng.standard_normal(V).astype(dt)
            tg = rng.integers(1, V, (B, U)).astype(np.int32)
            tl, ul = np.array([T, 1, 4], np.int32), np.array([U, 0, 2], np.int32)
            kw = dict(activation=act,  # chunks of 20 rows: samples split
                      max_workspace_bytes=workspace_bytes(enc, pred, w, rows_per_chunk=20))
            ref = cutrans.transducer_loss(enc, pred, w, bias, tg, tl, ul, backend="numpy", **kw)
            got = cutrans.transducer_loss(*(cupy.asarray(a) for a in (enc, pred, w, bias, tg,
                                                                       tl, ul)), **kw)
            for g, r in zip(got.grads, ref.grads):
                if not np.allclose(g.get(), r, rtol=1e-4, atol=1e-5):
                    print("MISMATCH fused grad", H, act, dt)
                    bad += 1
    # the variants: general row kernels (several blanks, duration logits, a warp and a block
    # per row) and the arc-table lattice (TDT with omega runs both lattices)
    variants = (dict(variant="multiblank", blank=-1, big_blank_durations=(2, 3), sigma=0.05),
                dict(variant="tdt", durations=(0, 1, 2, 4), sigma=0.05, omega=0.3),
                dict(variant="modified", delay_penalty=0.1))
    for spec in variants:
        for V, T, U in ((9, 40, 35), (9000, 3, 2)):
            n = V + len(spec.get("durations", ()))
            z, _, tl, ul = logits_case(rng, 3, T, U, n, np.float32)
            ul = np.minimum(ul, tl)  # "modified": U_b <= T_b
            tg = rng.integers(1, 4, (3, U)).astype(np.int32)
            ref = cutrans.rnnt_loss(z, tg, tl, ul, clamp=0.5, return_grad=True,
                                    backend="numpy", **spec)
            got = cutrans.rnnt_loss(*(cupy.asarray(a) for a in (z, tg, tl, ul)), clamp=0.5,
                                    return_grad=True, **spec)
            if not (np.allclose(float(got[0]), float(ref[0]), rtol=1e-5) and
                    np.allclose(got[1].get(), ref[1], rtol=1e-5, atol=1e-5)):
                print("MISMATCH variant", spec["variant"], V)
                bad += 1
    cupy.cuda.Device().synchronize()
    print("sanitizer_case:", "OK" if not bad else f"{bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
