"""The one GEMM route of the CuPy backend: ``cublasGemmEx`` on row-major views.

``gemm(a, b, out, accumulate, tf32)`` computes ``out (+)= a @ b`` (the contract of
``backends.base.Backend.gemm``) with one cuBLAS call on the current CuPy stream:

* operands are row-major 2-D views with a leading dimension (``strides == (ld, 1)``) or
  transposed views of such (``strides == (1, ld)``); ``out`` is row-major. cuBLAS is
  column-major, so the call computes ``out^T = b^T a^T``: a row-major array is its
  transpose in column-major order, a transposed view is the matrix itself.
* storage types float16 / bfloat16 / float32 / float64 (CUDA_R_16F / 16BF / 32F / 64F);
  ``out`` may be wider than the operands (float32 accumulators of 16-bit products).
* compute type: ``CUBLAS_COMPUTE_64F`` for float64, ``CUBLAS_COMPUTE_32F_FAST_TF32`` for
  float32 operands with ``tf32=True``, ``CUBLAS_COMPUTE_32F`` otherwise (tensor cores for
  16-bit operands, exact float32 for float32). The handle's math mode is set to
  ``CUBLAS_DEFAULT_MATH`` for the call (so ``CUPY_TF32=1`` does not silently turn exact
  float32 into TF32) and restored afterwards; likewise the pointer mode (host scalars).
* ``accumulate``: ``beta = 1`` -- the GEMM adds into ``out`` (dW over chunks), no extra pass.
* CUDA-graph capture: CuPy's cuBLAS wrapper refuses calls while the stream is capturing
  (``NotImplementedError``, raised before the GEMM). ``gemm`` then enqueues the same
  ``cublasGemmEx`` through ``_cublas_ctypes`` on its own handle, which ``prepare_capture``
  creates outside the capture (the fused op calls it on every ``checks="device"`` call: a
  warm-up call before the capture, as torch.cuda.graph recommends, makes it). Without that
  handle, or without a loadable cuBLAS, the capture gets a ``RuntimeError`` saying why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._dtypes import dtype_name
from . import _cublas_ctypes

# cudaDataType_t / cublasComputeType_t / cublasOperation_t / modes (cuBLAS >= 11 values)
_CUDA_TYPES = {"float16": 2, "bfloat16": 14, "float32": 0, "float64": 1}
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70
_OP_N, _OP_T = 0, 1
_GEMM_DEFAULT = -1
_POINTER_MODE_HOST = 0
_DEFAULT_MATH = 0

CAPTURE_NOT_PREPARED = (
    "cutrans: a GEMM of the fused op is being captured in a CUDA graph, but its capture-safe "
    "cuBLAS handle for this device does not exist yet: make one call with checks='device' "
    "outside the capture first (a warm-up call, as torch.cuda.graph recommends)")
CAPTURE_NO_CUBLAS = (
    "cutrans: the fused op cannot be captured in a CUDA graph here: CuPy refuses cuBLAS calls "
    "during stream capture and cuBLAS could not be called directly: ")


@dataclass(frozen=True)
class GemmExArgs:
    """The arguments of ``cublasGemmEx`` after the handle, for ``out (+)= a @ b`` computed
    as the column-major ``out^T = b^T a^T`` (``alpha``/``beta``: host scalars)."""

    op_b: int
    op_a: int
    n: int
    m: int
    k: int
    alpha: np.ndarray
    b_ptr: int
    b_type: int
    ldb: int
    a_ptr: int
    a_type: int
    lda: int
    beta: np.ndarray
    out_ptr: int
    out_type: int
    ldc: int
    compute: int
    algo: int = _GEMM_DEFAULT

    def after_handle(self) -> tuple:
        """``cublasGemmEx``'s arguments after the handle, in its order (scalars by host
        address)."""
        return (self.op_b, self.op_a, self.n, self.m, self.k, self.alpha.ctypes.data,
                self.b_ptr, self.b_type, self.ldb, self.a_ptr, self.a_type, self.lda,
                self.beta.ctypes.data, self.out_ptr, self.out_type, self.ldc, self.compute,
                self.algo)


def _operand(x):
    """(cuBLAS op, ld) of a 2-D view ``x`` read as the column-major matrix ``x^T``."""
    item = x.itemsize
    s0, s1 = x.strides[0] // item, x.strides[1] // item
    rows, cols = x.shape
    if rows == 0 or cols == 0:  # nothing is read: any leading dimension cuBLAS accepts
        return _OP_N, max(cols, 1)
    if s1 == 1 and (s0 >= cols or rows == 1):
        return _OP_N, max(s0, cols, 1)
    if s0 == 1 and (s1 >= rows or cols == 1):
        return _OP_T, max(s1, rows, 1)
    raise ValueError(f"gemm: operand with strides {x.strides} is neither row-major nor a "
                     f"transposed row-major view")


def _data_ptr(x) -> int:
    """Device address of a CuPy array (host address of a NumPy one: the CPU tests)."""
    return x.__array_interface__["data"][0] if isinstance(x, np.ndarray) else x.data.ptr


def gemm_ex_args(a, b, out, accumulate: bool = False, tf32: bool = False) -> GemmExArgs | None:
    """The ``cublasGemmEx`` arguments of ``out (+)= a @ b``; None when ``out`` is empty."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape != (m, n):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape}")
    if m == 0 or n == 0:
        return None
    out_op, ldc = _operand(out)
    if out_op != _OP_N:
        raise ValueError("gemm: out must be row-major")
    op_b, ldb = _operand(b)  # first column-major operand: b^T
    op_a, lda = _operand(a)  # second: a^T
    in_t = dtype_name(a.dtype)
    if in_t == "float64":
        compute, scalar = _COMPUTE_64F, np.float64
    else:
        compute = _COMPUTE_32F_FAST_TF32 if tf32 and in_t == "float32" else _COMPUTE_32F
        scalar = np.float32
    return GemmExArgs(op_b, op_a, n, m, k, np.array(1.0, dtype=scalar), _data_ptr(b),
                      _CUDA_TYPES[dtype_name(b.dtype)], ldb, _data_ptr(a), _CUDA_TYPES[in_t],
                      lda, np.array(1.0 if accumulate else 0.0, dtype=scalar), _data_ptr(out),
                      _CUDA_TYPES[dtype_name(out.dtype)], ldc, compute)  # k == 0: beta * out


def gemm(a, b, out, accumulate: bool = False, tf32: bool = False) -> None:
    """``out (+)= a @ b`` with ``cublasGemmEx`` (see the module docstring)."""
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas

    args = gemm_ex_args(a, b, out, accumulate, tf32)
    if args is None:
        return
    handle = device.get_cublas_handle()
    mode, math = cublas.getPointerMode(handle), cublas.getMathMode(handle)
    cublas.setPointerMode(handle, _POINTER_MODE_HOST)
    cublas.setMathMode(handle, _DEFAULT_MATH)
    refused = None
    try:
        cublas.gemmEx(handle, *args.after_handle())
    except NotImplementedError as exc:
        if "capture" not in str(exc):
            raise
        refused = exc  # the stream is capturing: nothing was enqueued
    finally:
        cublas.setMathMode(handle, math)
        cublas.setPointerMode(handle, mode)
    if refused is not None:
        _captured_gemm(args, refused)


def _cuda_major() -> int | None:
    from cupy.cuda import runtime
    try:
        return runtime.runtimeGetVersion() // 1000
    except Exception:  # noqa: BLE001 -- any failure: search every cuBLAS name
        return None


def _captured_gemm(args: GemmExArgs, refused: Exception) -> None:
    """The GEMM through ``_cublas_ctypes`` on the current (capturing) stream."""
    from cupy import cuda

    try:
        lib = _cublas_ctypes.library(_cuda_major())
    except _cublas_ctypes.CublasError as exc:
        raise RuntimeError(CAPTURE_NO_CUBLAS + str(exc)) from refused
    dev = cuda.Device().id
    if not lib.has_handle(dev):
        raise RuntimeError(CAPTURE_NOT_PREPARED) from refused
    lib.gemm_ex(dev, cuda.get_current_stream().ptr, args)


def prepare_capture() -> None:
    """Create the capture route's cuBLAS handle for the current device, unless the current
    stream is capturing (creating it would break the capture) or it exists. A failure to
    load cuBLAS is kept and reported by the capture that needs it."""
    from cupy import cuda
    from cupy.cuda import device

    try:
        if cuda.runtime.streamIsCapturing(cuda.get_current_stream().ptr):
            return
        device.get_cublas_handle()  # CuPy's cuBLAS loaded: the copy the search finds first
        lib = _cublas_ctypes.library(_cuda_major())
        lib.prepare(cuda.Device().id)
    except (_cublas_ctypes.CublasError, cuda.runtime.CUDARuntimeError):
        return
