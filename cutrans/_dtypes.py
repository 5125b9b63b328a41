"""The one dtype table: storage dtype -> (C++ type of the kernels, compute dtype)."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

try:  # bfloat16 for NumPy arrays comes from ml_dtypes (a dependency of JAX)
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover - optional
    _bfloat16 = None

class DType(NamedTuple):
    """One storage dtype: its NumPy dtype (None: bfloat16 without ml_dtypes), the kernels'
    C++ type, the NumPy compute dtype, and bytes per element."""

    numpy: object
    cpp: str
    compute: type
    itemsize: int


#: name -> DType (indexable as a tuple: [0] numpy dtype, [1] C++ type, [2] compute dtype)
DTYPES: dict[str, DType] = {
    "float16": DType(np.dtype(np.float16), "__half", np.float32, 2),
    "bfloat16": DType(np.dtype(_bfloat16) if _bfloat16 is not None else None, "__nv_bfloat16",
                      np.float32, 2),
    "float32": DType(np.dtype(np.float32), "float", np.float32, 4),
    "float64": DType(np.dtype(np.float64), "double", np.float64, 8),
}

INDEX_DTYPES = ("int32", "int64")


def dtype_name(dtype) -> str:
    """Canonical name ('float16', 'bfloat16', 'float32', 'float64', ...) of a NumPy, CuPy,
    JAX or torch dtype. Memoised: ``str(numpy.dtype)`` alone costs ~10 us, and the kernel
    backend asks for every array argument of every launch."""
    try:
        return _dtype_name_cached(dtype)
    except TypeError:  # unhashable
        return _dtype_name(dtype)


def _dtype_name(dtype) -> str:
    text = str(dtype)
    if text.endswith("bfloat16"):
        return "bfloat16"
    if text.startswith("torch."):
        return text[len("torch."):]
    try:
        return str(np.dtype(dtype))
    except TypeError:
        return text


_dtype_name_cached = functools.lru_cache(maxsize=256)(_dtype_name)


def is_float_dtype(dtype) -> bool:
    return dtype_name(dtype) in DTYPES


def compute_dtype(dtype) -> np.dtype:
    """float64 for float64 storage, float32 for every other supported float dtype."""
    return np.dtype(DTYPES[dtype_name(dtype)][2])


def cpp_type(dtype) -> str:
    """C++ storage type of the kernels for a NumPy/CuPy dtype."""
    return DTYPES[dtype_name(dtype)][1]
