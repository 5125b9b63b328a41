"""Backends of the one orchestration: NumPy reference, CuPy kernels, CPU emulation.

``get_backend(None, array)`` picks by array type: CuPy arrays -> the CUDA kernels,
anything else -> NumPy. ``"emulated"`` runs the CUDA sources on the CPU (g++), on
NumPy arrays, through the very same orchestration.
"""
from __future__ import annotations

from .base import ACTIVATIONS, Backend, RowLayout
from .numpy_backend import NumpyBackend

BACKENDS = ("numpy", "cupy", "emulated")


def is_cupy_array(x) -> bool:
    return type(x).__module__.startswith("cupy")


def get_backend(backend=None, array=None) -> Backend:
    """A backend object from a name, an instance, or (None) the type of ``array``."""
    if backend is None:
        backend = "cupy" if is_cupy_array(array) else "numpy"
    if not isinstance(backend, str):
        if all(hasattr(backend, op) for op in ("xp", "row_stats", "lattice", "gemm")):
            return backend
        raise TypeError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, a backend "
                        f"object or None, got {type(backend).__name__}")
    if backend == "numpy":
        return NumpyBackend()
    if backend == "cupy":
        from .kernel_backend import cupy_backend
        return cupy_backend()
    if backend == "emulated":
        from .kernel_backend import emulated_backend
        return emulated_backend()
    raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))} or a backend "
                     f"object, got {backend!r}")


__all__ = ["ACTIVATIONS", "BACKENDS", "Backend", "NumpyBackend", "RowLayout", "get_backend",
           "is_cupy_array"]
