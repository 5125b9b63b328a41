"""Cost model: a modelled H100 time for each recorded launch (never a measurement).

Every constant comes from ``/work/shared/GPU-FINDINGS.md`` (the project's one H100
measurement, commit 5684109, NVIDIA H100 80GB HBM3) unless marked otherwise; the source
line is quoted next to it. Two constants (``T_WAVE``, ``T_STEP``) are *fitted to the very
profile the validation gate checks* (``replay.py``): the gate shows the model can
reproduce that profile, not that it predicts other kernels.

Formulas (times in seconds; ``BW`` = HBM bandwidth, ``SMS`` = 132 SMs)::

    GEMM            t = max(FLOPs / rate(dtypes, aligned), bytes / BW)
                    (16-bit operands: one rate when every operand's contiguous extent and
                    leading dimension is a multiple of 16 bytes, another when one is not)
    row/joint kernel        (one block per row / frame / label slot, grid-stride)
                    resident = SMS * min(32, 2048 // block)      blocks per wave
                    waves    = ceil(grid / resident)
                    t = max(bytes / (BW * min(1, grid / SMS)), waves * T_WAVE)
    lattice         (one block per sample and sweep, anti-diagonal wavefront)
                    t = ceil(grid / resident) * steps * T_STEP + bytes / BW
                    steps = (T_b + U_b) of the launch's longest sample (RNN-T: alpha and
                    beta sweeps in parallel blocks; arc table: x2 with beta)
    CuPy elementwise / memset / fill / full reduction
                    t = max(bytes / BW, T_WAVE)  (memset/fill/reduce: bytes / BW)
    CuPy sum(axis=0) (column reduction, the old schedule only)
                    t = bytes / COLUMN_SUM_RATE

Measured against an H100 (BENCHMARKS.md, "Measured against the model"): the GPU time was
0.80x of the measured wall time on librispeech fp32, 0.71x bf16 (0.85x and 0.79x with the
host term below); the one class it missed (0.18x) was the d_pred joint backward, bound by
one thread's serial loop, which the model counts at full bandwidth.

Host time: ``wall_seconds`` adds ``HOST_PER_LAUNCH`` (27 us, measured) per launch to the
GPU time (the report's "wall" line). Not modelled: overlap of host and GPU work, overlap of
launches on one stream (serial), the slowdown of kernels sharing the GPU with the pipelined
one pass's side stream (``gpu_seconds`` overlaps the two streams freely), registers/shared
memory limiting occupancy, L2 effects beyond "enc/pred rows are read once", cuBLAS shape
effects beyond 16-bit alignment (small or skinny GEMMs run at the rate measured on
824,755 x 512 x 500, or, aligned 16-bit ones, on the headline's rows x 512 x 1024), clocks
and power.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .._dtypes import DTYPES
from .._fused import round8

# ------------------------------------------------------------------ the device
SMS = 132  # H100 SXM5 (80GB HBM3): 132 SMs -- NVIDIA's datasheet (not measured)
MAX_THREADS_PER_SM = 2048  # sm_90 limits -- CUDA programming guide (not measured)
MAX_BLOCKS_PER_SM = 32

# GPU-FINDINGS, "GEMM routes measured in CuPy (N=824,755, H=512, V=500)":
#   "| `ones @ dz` (the same as a GEMV) | 0.63 ms |"  on dz (824,755 x 500) fp32 = 1.65 GB
BW = 824_755 * 500 * 4 / 0.63e-3  # bytes/s: 2.62e12, HBM bandwidth a streaming kernel gets

# GPU-FINDINGS, same table: "| `dz.sum(axis=0)` (bias gradient) | 19.5 ms |"  (1.65 GB)
COLUMN_SUM_RATE = 824_755 * 500 * 4 / 19.5e-3  # bytes/s: 8.5e10

# GEMM rates, FLOP/s (2 m n k per GEMM), from the same table:
GEMM_RATES = {
    # "| fp32 `matmul` (CUPY_TF32 unset) | 8.1-8.7 ms | 49-52 |"; also "the 3 GEMMs alone on
    # the packed rows, fp32 (no TF32) | 26 ms" (48.7 TFLOP/s)
    ("float32", "float32", False): 50e12,
    # "| fp32 `matmul` with `CUPY_TF32=1` | 1.4-3.0 ms | 139-295 |": the middle time, 2.2 ms
    ("float32", "float32", True): 192e12,
    # "| float16 `matmul` | 1.6-1.9 ms | 217-261 |"; "| bfloat16 `matmul` ... | 1.7-2.0 ms |
    # 211-255 |"; "the 3 GEMMs alone, bf16 (tensor cores) | 5.7 ms" (222 TFLOP/s)
    ("float16", "float16", False): 230e12,
    ("bfloat16", "bfloat16", False): 230e12,
    # "| bf16 via `cublas.gemmEx`, fp32 output and compute, on uint16 views | 2.1 ms | 198 |"
    ("bfloat16", "float32", False): 198e12,
    ("float16", "float32", False): 198e12,  # assumed equal to the bf16 route (not measured)
    # float64: NOT MEASURED. Assumed: 3/4 of the datasheet's 67 TFLOP/s FP64 tensor-core peak.
    ("float64", "float64", False): 50e12,
}
UNMEASURED_RATES = {("float16", "float32", False), ("float64", "float64", False)}

# The 16-bit rates above were all measured with V=500 (1000-byte extents: cuBLAS's kernels
# for them load less than 16 bytes at a time). With every extent and leading dimension a
# multiple of 16 bytes the measured rate is higher -- BENCHMARKS.md, run D (H100, commit
# 9052bb6): "headline bf16, 512 MiB | 3.09 s, roof 1.06 s" on 205,824,000 rows, H=512,
# V=1024: 3 x 2 x 205,824,000 x 512 x 1024 / 1.06 s = 611 TFLOP/s, bf16 in and out. Used
# for every aligned 16-bit GEMM (both output types: assumed, the roof's dW was bf16); for
# other aligned shapes it is an assumption. Run E (BENCHMARKS.md, ``scripts/gemm_shapes.py``)
# measured the fused op's padded librispeech GEMMs (253,430 rows, Vp=504, K=Hp=520) at
# 3 x 2 x 253,430 x 504 x 520 / 0.791 ms = 504 TFLOP/s, 0.82x this rate: kept as the one
# aligned rate (the model stays within its 2x; a rate per shape would need more runs).
ALIGNED_16BIT_RATE = 3 * 2 * 205_824_000 * 512 * 1024 / 1.06  # FLOP/s: 6.11e14
HALF_TYPES = ("float16", "bfloat16")

# ------------------------------------------------------------------ fitted constants
# Fitted to the profile this model is validated on (GPU-FINDINGS "Where the time goes"),
# by ``replay.fit_constants()`` (tests/ledger checks they are its optimum):
# T_WAVE: least squares in log(modelled / profiled) over row_stats, row_grad, joint_forward
#   and joint_backward of the replayed 5684109 schedule (391-782 waves each): 4.23 us.
T_WAVE = 4.2e-6  # s per wave of resident blocks of a one-block-per-row kernel
# T_STEP: the profile's "lattice | 0.7 ms" over 2 x 573 wavefront steps (one launch, 30
#   samples, longest T_b + U_b = 451 + 122), less its bytes: 0.598 us.
T_STEP = 0.60e-6  # s per anti-diagonal step of the lattice kernel


# ------------------------------------------------------------------ host time
# Measured (BENCHMARKS.md, "GPU", run A: H100, librispeech-100 fp32): wall time above this
# model's GPU time per launch -- 64 MiB budget (1,000 launches): (82.1 - 50.9) ms / 1000 =
# 31 us; 8 MiB (9,810 launches): (299.9 - 80.9) ms / 9810 = 22 us. Their mean: the Python,
# CuPy launch and cuBLAS call cost of one launch, serial with the GPU work when kernels are
# short (``wall_seconds``).
HOST_PER_LAUNCH = 27e-6  # s


def wall_seconds(gpu_seconds: float, n_launches: int) -> float:
    """Modelled wall time of a call: its GPU time plus ``HOST_PER_LAUNCH`` per launch."""
    return gpu_seconds + n_launches * HOST_PER_LAUNCH


SYNC_KINDS = ("fork", "mark", "join")  # stream dependencies in a launch list, not launches


@dataclass(frozen=True)
class Cost:
    """Modelled seconds of one launch and what bounds it: ``compute`` (GEMM FLOPs),
    ``bandwidth`` (bytes), ``latency`` (waves of blocks / wavefront steps)."""

    seconds: float
    bound: str


def resident_blocks(block: int) -> int:
    """Blocks of ``block`` threads resident on the whole GPU at once (thread/block limits)."""
    return SMS * min(MAX_BLOCKS_PER_SM, MAX_THREADS_PER_SM // max(1, block))


def aligned16(*nbytes: int) -> bool:
    """Every extent or leading dimension (in bytes) a multiple of 16: the 16-bit GEMMs'
    aligned rate applies."""
    return all(n % 16 == 0 for n in nbytes)


def _rate_key(in_dtype: str, out_dtype: str, tf32: bool, aligned: bool):
    """``"aligned"`` (the aligned 16-bit rate) or the ``GEMM_RATES`` key of a GEMM."""
    if aligned and in_dtype in HALF_TYPES:
        return "aligned"
    key = (in_dtype, out_dtype, bool(tf32) and in_dtype == "float32")
    return key if key in GEMM_RATES else (in_dtype, in_dtype, key[2])


def gemm_rate(in_dtype: str, out_dtype: str, tf32: bool, aligned: bool = False) -> float:
    """FLOP/s of a GEMM; ``aligned``: every operand's contiguous extent and leading
    dimension a multiple of 16 bytes (matters for 16-bit inputs only)."""
    key = _rate_key(in_dtype, out_dtype, tf32, aligned)
    return ALIGNED_16BIT_RATE if key == "aligned" else GEMM_RATES[key]


def gemm_rate_source(in_dtype: str, out_dtype: str, tf32: bool, aligned: bool) -> str:
    """Where ``gemm_rate``'s figure for these arguments comes from (for the report)."""
    key = _rate_key(in_dtype, out_dtype, tf32, aligned)
    if key == "aligned":
        return ("measured on the headline's aligned GEMMs (run D); assumed for other "
                "aligned shapes (run E: 0.82x of it at V=504)")
    if key in UNMEASURED_RATES:
        return "NOT MEASURED (assumed)"
    return "measured (GPU-FINDINGS, V=500)"


def cost(launch, t_wave: float = T_WAVE, t_step: float = T_STEP) -> Cost:
    """The modelled time of one ``record.Launch`` (a stream dependency: 0)."""
    k, nbytes = launch.kind, launch.bytes
    if k in SYNC_KINDS:
        return Cost(0.0, "sync")
    if k == "gemm":
        m, n, kk, in_t, out_t, tf, aligned = launch.gemm
        tc, tb = launch.flops / gemm_rate(in_t, out_t, tf, aligned), nbytes / BW
        return Cost(max(tc, tb), "compute" if tc >= tb else "bandwidth")
    if k == "kernel":
        frac = min(1.0, launch.grid / SMS)
        tb = nbytes / (BW * frac)
        tl = math.ceil(launch.grid / resident_blocks(launch.block)) * t_wave
        return Cost(max(tb, tl), "bandwidth" if tb >= tl else "latency")
    if k == "lattice":
        tl = math.ceil(launch.grid / resident_blocks(launch.block)) * launch.steps * t_step
        return Cost(tl + nbytes / BW, "latency" if tl >= nbytes / BW else "bandwidth")
    if k == "column_sum":
        return Cost(nbytes / COLUMN_SUM_RATE, "bandwidth")
    if k == "elementwise":
        return Cost(max(nbytes / BW, t_wave), "bandwidth")
    if k in ("memset", "fill", "reduce"):
        return Cost(nbytes / BW, "bandwidth")
    raise ValueError(f"unknown launch kind {k!r}")


def gpu_seconds(launches) -> float:
    """Modelled GPU seconds of a call's launches. One stream: their sum. With the pipelined
    one pass's side stream (``Launch.stream`` 1): each stream's launches in order, a side
    launch after the main stream's work before its ``fork``, a main launch after the side
    stream's work up to the ``mark`` its last ``join`` waits for -- assuming the two streams'
    kernels share the GPU without slowing each other (optimistic: the side stream's lattices
    keep a few SMs busy, but they take issue slots and bandwidth from what runs beside them)."""
    main = side = 0.0
    marks: dict[int, float] = {}
    for rec in launches:
        if rec.kind == "fork":
            side = max(side, main)
        elif rec.kind == "mark":
            marks[rec.slot] = side
        elif rec.kind == "join":
            main = max(main, marks[rec.slot])
        elif rec.stream:
            side += cost(rec).seconds
        else:
            main += cost(rec).seconds
    return max(main, side)


def gemm_roof(rows: int, hidden: int, vocab: int, dtype: str, tf32: bool = False,
              padded: bool = True) -> float:
    """Modelled seconds of the three GEMMs alone (2 R H V FLOPs each) at ``dtype``'s rate
    (16-bit outputs: the 16-bit route) -- the roof the issue's targets refer to.
    ``padded``: H and V rounded up to multiples of 8, as the bench's roof runs them (16-bit:
    the aligned rate); False: the unpadded, contiguous GEMMs the bench ran before."""
    if padded:
        hidden, vocab = round8(hidden), round8(vocab)
    size = DTYPES[dtype].itemsize
    return 3 * 2 * rows * hidden * vocab / gemm_rate(dtype, dtype, tf32,
                                                     aligned16(hidden * size, vocab * size))
