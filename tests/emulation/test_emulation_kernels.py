"""Purpose-written kernels run under the CPU emulation and checked against numpy."""
from __future__ import annotations

import time

import numpy as np
import pytest

from emu_support import names

MODES = [("fiber", "forward"), ("fiber", "reverse"), ("fiber", "shuffle"), ("thread", "forward")]


def alpha_reference(blank, emit):
    T, U1 = blank.shape
    a = np.zeros((T, U1), dtype=np.float64)
    for t in range(T):
        for u in range(U1):
            if t == 0 and u == 0:
                continue
            c = []
            if t > 0:
                c.append(a[t - 1, u] + blank[t - 1, u])
            if u > 0:
                c.append(a[t, u - 1] + emit[t, u - 1])
            a[t, u] = np.logaddexp.reduce(c)
    return a


def run_wavefront(mod, dtype, B, T, U, threads, rng):
    blank = np.log(rng.uniform(0.1, 1.0, (B, T, U + 1))).astype(dtype)
    emit = np.log(rng.uniform(0.1, 1.0, (B, T, U))).astype(dtype)
    alpha = np.full((B, T, U + 1), np.nan, dtype=dtype)
    k = mod.get_function(f"alpha_wavefront<{'float' if dtype == np.float32 else 'double'}>")
    t0 = time.perf_counter()
    k((B,), (threads,), (blank, emit, alpha, np.int32(T), np.int32(U)))
    return blank, emit, alpha, time.perf_counter() - t0


@pytest.mark.parametrize("mode,order", MODES)
def test_block_reduction(emu, mode, order):
    mod = emu("reduce.cu", mode, order)
    rng = np.random.default_rng(0)
    x = rng.random((6, 1000)).astype(np.float32)
    out = np.zeros(6, np.float32)
    mod.get_function("block_sum<float, 128>")((6,), (128,), (x, out, np.int32(1000)), shared_mem=4 * 4)
    np.testing.assert_allclose(out, x.sum(1, dtype=np.float64), rtol=1e-5)
    xd = x.astype(np.float64)
    od = np.zeros(6)
    mod.get_function("block_sum_static")(6, 96, (xd, od, np.int32(1000)))
    np.testing.assert_allclose(od, xd.sum(1), rtol=1e-12)


def test_block_reduction_half_inputs(emu):
    mod = emu("reduce.cu")
    x = np.random.default_rng(1).random((3, 500)).astype(np.float16)
    out = np.zeros(3, np.float32)
    mod.get_function("block_sum<__half, 64>")(3, 64, (x, out, np.int32(500)), shared_mem=2 * 4)
    np.testing.assert_allclose(out, x.astype(np.float32).sum(1), rtol=1e-5)
    xb = x.astype(np.float32).view(np.uint32) >> 16  # exact bfloat16 values, passed as uint16 bits
    bits = xb.astype(np.uint16)
    mod.get_function("block_sum<__nv_bfloat16, 256>")(3, 256, (bits, out, np.int32(500)), shared_mem=8 * 4)
    ref = (bits.astype(np.uint32) << 16).view(np.float32).sum(1)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


@pytest.mark.parametrize("mode,order", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wavefront_alpha(emu, mode, order, dtype):
    rng = np.random.default_rng(2)
    blank, emit, alpha, _ = run_wavefront(emu("wavefront.cu", mode, order), dtype, 2, 13, 7, 32, rng)
    for b in range(2):
        ref = alpha_reference(blank[b].astype(np.float64), emit[b].astype(np.float64))
        np.testing.assert_allclose(alpha[b], ref, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_wavefront_1000_steps_256_threads_fiber(emu):
    """Performance probe: 1000 anti-diagonals x 256 threads in fiber mode (prints the time)."""
    mod = emu("wavefront.cu")
    blank, emit, alpha, dt = run_wavefront(mod, np.float32, 1, 745, 255, 256, np.random.default_rng(3))
    print(f"\nwavefront 1000 steps x 256 threads, fiber mode: {dt * 1e3:.1f} ms")
    assert np.isfinite(alpha).all()
    ref = alpha_reference(blank[0, :40, :40].astype(np.float64), emit[0, :40, :39].astype(np.float64))
    np.testing.assert_allclose(alpha[0, :40, :40], ref, rtol=1e-4)


def test_wavefront_thread_mode_timing(emu):
    mod = emu("wavefront.cu", "thread")
    blank, emit, alpha, dt = run_wavefront(mod, np.float32, 1, 69, 31, 32, np.random.default_rng(4))
    print(f"\nwavefront 100 steps x 32 threads, thread mode: {dt * 1e3:.1f} ms")
    np.testing.assert_allclose(alpha[0], alpha_reference(blank[0].astype(np.float64), emit[0].astype(np.float64)),
                               rtol=1e-4)


@pytest.mark.parametrize("mode,order", MODES)
def test_atomics(emu, mode, order):
    mod = emu("atomics.cu", mode, order)
    n = 1000
    v = np.random.default_rng(5).integers(0, 16, n).astype(np.int32)
    hist, uhist = np.zeros(16, np.int32), np.zeros(16, np.uint32)
    fsum, dsum, usum = np.zeros(1, np.float32), np.zeros(1, np.float64), np.zeros(1, np.uint64)
    imax, imin = np.array([-(2**31)], np.int32), np.array([2**31 - 1], np.int32)
    cas, exch = np.zeros(1, np.int32), np.full(1, -1, np.int32)
    mod.get_function("atomics_kernel")((n + 127) // 128, 128, (v, np.int32(n), hist, uhist, fsum, dsum, usum,
                                                               imax, imin, cas, exch))
    ref = np.bincount(v, minlength=16)
    np.testing.assert_array_equal(hist, ref)
    np.testing.assert_array_equal(uhist, 2 * ref)
    assert fsum[0] == 0.5 * n and dsum[0] == v.sum() and usum[0] == v.sum()
    assert imax[0] == 3 * v.max() - 7 and imin[0] == 3 * v.min() - 7
    assert cas[0] == n and 0 <= exch[0] < n


@pytest.mark.parametrize("mode,order", MODES)
def test_early_return_leaves_barriers(emu, mode, order):
    mod = emu("misc.cu", mode, order)
    n, B = 45, 3
    x = np.arange(B * n, dtype=np.float32)
    y = np.zeros_like(x)
    ballot, count = np.zeros(B * 32, np.uint32), np.zeros(B, np.int32)
    mod.get_function("reverse_partial")(B, 128, (x, y, ballot, count, np.int32(n)))
    np.testing.assert_array_equal(y.reshape(B, n), x.reshape(B, n)[:, ::-1])
    np.testing.assert_array_equal(ballot.reshape(B, 32)[:, :2], [[0xFFFFFFFF, (1 << 13) - 1]] * B)
    np.testing.assert_array_equal(count, n)


def bf16_reference(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits, computed from the two neighbours
    (the neighbour above the largest finite value is 2**128, as if the exponent went on)."""
    bits = x.view(np.uint32)
    lo = (bits >> 16).astype(np.uint32)
    with np.errstate(invalid="ignore", over="ignore"):
        lo_f = (lo << 16).view(np.float32).astype(np.float64)
        hi_bits = ((lo + 1) << 16).astype(np.uint32)
        hi_f = hi_bits.view(np.float32).astype(np.float64)
        hi_f = np.where(np.isinf(hi_f) & np.isfinite(lo_f), np.copysign(2.0**128, lo_f), hi_f)
        xf = x.astype(np.float64)
        d_lo, d_hi = np.abs(xf - lo_f), np.abs(hi_f - xf)
    up = (d_hi < d_lo) | ((d_hi == d_lo) & (lo & 1 == 1))
    out = np.where(up, lo + 1, lo).astype(np.uint16)
    return np.where(np.isnan(x), (bits >> 16 | 0x40).astype(np.uint16), out)


def test_half_bfloat16_round_trip(emu):
    mod = emu("misc.cu")
    rng = np.random.default_rng(6)
    special = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65519.99, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 2.98e-8,
                        1e-10, 6.1e-5, 5.96e-8, np.inf, -np.inf, np.nan, 1 + 2**-11, 1 + 3 * 2**-11,
                        1 + 2**-8, 1 + 3 * 2**-8, 3.4e38], np.float32)
    halfway = (rng.integers(0, 2**16, 2000).astype(np.uint32) << 16 | 0x8000).view(np.float32)
    scaled = (rng.standard_normal(5000) * 10.0 ** rng.integers(-9, 6, 5000)).astype(np.float32)
    x = np.concatenate([special, scaled,
                        rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        halfway])
    n = x.size
    grid = (n + 255) // 256
    h, back = np.zeros(n, np.float16), np.zeros(n, np.float32)
    mod.get_function("convert16<__half>")(grid, 256, (x, h, back, np.int32(n)))
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(np.float16)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(h.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(h[nan]).all()
    np.testing.assert_array_equal(back[~nan], ref[~nan].astype(np.float32))
    b = np.zeros(n, np.uint16)  # bfloat16 bits (ml_dtypes.bfloat16 arrays work the same way)
    mod.get_function("convert16<__nv_bfloat16>")(grid, 256, (x, b, back, np.int32(n)))
    np.testing.assert_array_equal(b, bf16_reference(x))
    np.testing.assert_array_equal(back.view(np.uint32), b.astype(np.uint32) << 16)


def test_bfloat16_ml_dtypes_array(emu):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.linspace(-3, 3, 300, dtype=np.float32)
    b, back = np.zeros(300, ml_dtypes.bfloat16), np.zeros(300, np.float32)
    emu("misc.cu").get_function("convert16<__nv_bfloat16>")(2, 256, (x, b, back, np.int32(300)))
    np.testing.assert_array_equal(b.view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))


@pytest.mark.parametrize("mode", ["fiber", "thread"])
def test_multidim_grid(emu, mode):
    grid, block = (3, 2, 2), (4, 2, 3)
    W, H, D = (g * b for g, b in zip(grid, block))
    out = np.full((D, H, W, 4), -1, np.int32)
    emu("misc.cu", mode).get_function("index3d")(grid, block, (out,))
    z, y, x = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    np.testing.assert_array_equal(out[..., 0], x)
    np.testing.assert_array_equal(out[..., 1], y)
    np.testing.assert_array_equal(out[..., 2], z)
    bid = ((z // block[2]) * grid[1] + y // block[1]) * grid[0] + x // block[0]
    np.testing.assert_array_equal(out[..., 3], bid)


@pytest.mark.parametrize("mode", ["fiber", "thread"])
def test_uninitialised_shared_memory_reads_nan(emu, mode):
    out, dyn = np.zeros((3, 64), np.float32), np.zeros((3, 64), np.float32)
    emu("misc.cu", mode).get_function("read_uninit<64>")(3, 64, (out, dyn, np.int32(20)), shared_mem=64 * 4)
    assert (out[0] == 1).all() and (dyn[0] == 2).all()
    for b in (1, 2):
        assert (out[b, :20] == 1).all() and np.isnan(out[b, 20:]).all()
        assert (dyn[b, :20] == 2).all() and np.isnan(dyn[b, 20:]).all()


def test_modes_and_orders_agree(emu):
    """Correct kernels give bit-identical results whatever the scheduler and thread order."""
    results = []
    for mode, order in MODES + [("fiber", "shuffle")]:
        mod = emu("wavefront.cu", mode, order, seed=len(results))
        _, _, alpha, _ = run_wavefront(mod, np.float32, 2, 21, 9, 64, np.random.default_rng(7))
        xs = np.random.default_rng(8).random((4, 777)).astype(np.float32)
        out = np.zeros(4, np.float32)
        emu("reduce.cu", mode, order).get_function("block_sum<float, 128>")(4, 128, (xs, out, np.int32(777)),
                                                                              shared_mem=16)
        results.append((alpha, out))
    for alpha, out in results[1:]:
        np.testing.assert_array_equal(alpha, results[0][0])
        np.testing.assert_array_equal(out, results[0][1])


def test_names_listed_in_sources():
    assert "alpha_wavefront<double>" in names("wavefront.cu")


@pytest.mark.parametrize("mode,order", MODES)
def test_warp_intrinsics(emu, mode, order):
    k = emu("warp.cu", mode, order).get_function("warp_ops")
    n = 64
    v = np.random.default_rng(9).integers(-5, 100, n).astype(np.int32)
    idx, up, down, xr = (np.zeros(n, np.int32) for _ in range(4))
    dbl, ll = np.zeros(n), np.zeros(n, np.int64)
    ballot, any_, all_ = np.zeros(n, np.uint32), np.zeros(n, np.int32), np.zeros(n, np.int32)
    k(1, n, (v, idx, up, down, xr, dbl, ll, ballot, any_, all_))
    lane = np.arange(n) % 32
    base = np.arange(n) - lane

    def take(src_lane):
        return v[base + src_lane]
    np.testing.assert_array_equal(idx, take((lane & ~7) + ((lane * 7 % 32) & 7)))
    np.testing.assert_array_equal(up, take(np.where(lane % 16 >= 3, lane - 3, lane)))
    np.testing.assert_array_equal(down, take(np.where(lane + 5 < 32, lane + 5, lane)))
    np.testing.assert_array_equal(xr, take(lane ^ 6))
    np.testing.assert_array_equal(dbl, take(31 - lane) * 0.5)
    np.testing.assert_array_equal(ll, take(np.where(lane + 1 < 32, lane + 1, lane)).astype(np.int64) << 33)
    for g in range(4):  # half-warp groups
        sl = slice(16 * g, 16 * g + 16)
        bits = sum(1 << (16 * (g % 2) + j) for j in range(16) if v[sl][j] % 3 == 0)
        assert (ballot[sl] == bits).all()
        assert (any_[sl] == int((v[sl] > 90).any())).all()
        assert (all_[sl] == int((v[sl] >= 0).all())).all()


@pytest.mark.parametrize("mode", ["fiber", "thread"])
def test_shuffle_from_exited_lane_is_poison(emu, mode):
    out = np.zeros(32, np.float32)
    emu("warp.cu", mode).get_function("shfl_from_exited")(1, 32, (out,))
    assert (out[:4] == 1).all() and np.isnan(out[4:16]).all() and (out[16:20] == 1).all()
