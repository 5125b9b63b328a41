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
* no CUDA-graph capture: CuPy's cuBLAS wrapper raises during stream capture; ``gemm`` turns
  that into a ``RuntimeError`` (``CAPTURE_UNSUPPORTED``) that says what cannot be captured.
"""
from __future__ import annotations

import numpy as np

from .._dtypes import dtype_name

# cudaDataType_t / cublasComputeType_t / cublasOperation_t / modes (cuBLAS >= 11 values)
_CUDA_TYPES = {"float16": 2, "bfloat16": 14, "float32": 0, "float64": 1}
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70
_OP_N, _OP_T = 0, 1
_GEMM_DEFAULT = -1
_POINTER_MODE_HOST = 0
_DEFAULT_MATH = 0

CAPTURE_UNSUPPORTED = (
    "cutrans: the fused op cannot be captured in a CUDA graph: its GEMMs run on cuBLAS "
    "through CuPy, which refuses cuBLAS calls during stream capture; run it outside "
    "torch.cuda.graph / stream capture")


def _operand(x):
    """(cuBLAS op, ld) of a 2-D view ``x`` read as the column-major matrix ``x^T``."""
    item = x.itemsize
    s0, s1 = x.strides[0] // item, x.strides[1] // item
    rows, cols = x.shape
    if s1 == 1 and (s0 >= cols or rows == 1):
        return _OP_N, max(s0, cols, 1)
    if s0 == 1 and (s1 >= rows or cols == 1):
        return _OP_T, max(s1, rows, 1)
    raise ValueError(f"gemm: operand with strides {x.strides} is neither row-major nor a "
                     f"transposed row-major view")


def gemm(a, b, out, accumulate: bool = False, tf32: bool = False) -> None:
    """``out (+)= a @ b`` with ``cublasGemmEx`` (see the module docstring)."""
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas

    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape != (m, n):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape}")
    if m == 0 or n == 0:
        return
    out_op, ldc = _operand(out)
    if out_op != _OP_N:
        raise ValueError("gemm: out must be row-major")
    op_b, ldb = _operand(b)  # first column-major operand: b^T
    op_a, lda = _operand(a)  # second: a^T
    in_t, out_t = dtype_name(a.dtype), dtype_name(out.dtype)
    if in_t == "float64":
        compute, scalar = _COMPUTE_64F, np.float64
    else:
        compute = _COMPUTE_32F_FAST_TF32 if tf32 and in_t == "float32" else _COMPUTE_32F
        scalar = np.float32
    alpha = np.array(1.0, dtype=scalar)
    beta = np.array(1.0 if accumulate else 0.0, dtype=scalar)
    handle = device.get_cublas_handle()
    mode, math = cublas.getPointerMode(handle), cublas.getMathMode(handle)
    cublas.setPointerMode(handle, _POINTER_MODE_HOST)
    cublas.setMathMode(handle, _DEFAULT_MATH)
    try:
        cublas.gemmEx(handle, op_b, op_a, n, m, k, alpha.ctypes.data,
                      b.data.ptr, _CUDA_TYPES[dtype_name(b.dtype)], ldb,
                      a.data.ptr, _CUDA_TYPES[in_t], lda,
                      beta.ctypes.data, out.data.ptr, _CUDA_TYPES[out_t], ldc,
                      compute, _GEMM_DEFAULT)  # k == 0: out = beta * out
    except NotImplementedError as exc:
        if "capture" not in str(exc):
            raise
        raise RuntimeError(CAPTURE_UNSUPPORTED) from exc
    finally:
        cublas.setMathMode(handle, math)
        cublas.setPointerMode(handle, mode)
