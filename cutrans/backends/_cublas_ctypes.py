"""cuBLAS through ``ctypes``: the GEMM route of the CuPy backend during CUDA-graph capture.

CuPy's cuBLAS wrapper refuses every call while the current stream is capturing (it raises
``NotImplementedError`` before the GEMM), although cuBLAS itself supports stream capture
(``cublasGemmEx`` is enqueued on the handle's stream like a kernel). This module calls the
library directly:

* the library: the ``libcublas.so.N`` this process has loaded (CuPy's, found in
  ``/proc/self/maps``; N = CuPy's CUDA major version preferred), else ``libcublas.so.N`` /
  ``libcublas.so`` on the loader's path;
* one handle per device, our own (never CuPy's or torch's, which may live in another copy
  of the library), created **outside** a capture (``CublasLibrary.prepare``: cublasCreate
  allocates device memory, which a capture forbids), with host pointer mode and
  ``CUBLAS_DEFAULT_MATH`` (the compute type picks TF32, never the handle);
* per call: ``cublasSetStream`` to the current stream, then one ``cublasGemmEx`` with the
  arguments of ``_cublas.gemm_ex_args`` (the same mapping as the CuPy route).

The functions are looked up under their ``_v2`` names first (cuBLAS 11-13 export both).
``tests/core/test_cublas_ctypes.py`` runs this module against a stand-in library compiled
from C (host memory as "device" memory), so argument order and types are checked on a CPU.
"""
from __future__ import annotations

import ctypes
import os
import re
import threading

_c_int, _c_void_p = ctypes.c_int, ctypes.c_void_p

_PROTOTYPES = {  # name: argument types (every function returns cublasStatus_t, an int)
    "cublasCreate": [ctypes.POINTER(_c_void_p)],
    "cublasSetStream": [_c_void_p, _c_void_p],
    "cublasSetPointerMode": [_c_void_p, _c_int],
    "cublasSetMathMode": [_c_void_p, _c_int],
    "cublasGemmEx": [_c_void_p, _c_int, _c_int, _c_int, _c_int, _c_int,      # handle, ops, m n k
                     _c_void_p, _c_void_p, _c_int, _c_int,                   # alpha, B, type, ld
                     _c_void_p, _c_int, _c_int,                               # A, type, ld
                     _c_void_p, _c_void_p, _c_int, _c_int,                    # beta, C, type, ld
                     _c_int, _c_int],                                         # compute, algo
}
_POINTER_MODE_HOST, _DEFAULT_MATH = 0, 0
_LIB_NAME = re.compile(r"(^|/)libcublas\.so(\.\d+)*$")


class CublasError(RuntimeError):
    """A cuBLAS call through ``ctypes`` returned a status other than CUBLAS_STATUS_SUCCESS."""


def loaded_cublas(maps: str, cuda_major: int | None = None) -> list[str]:
    """Paths of ``libcublas.so*`` (not cublasLt) mapped in a ``/proc/<pid>/maps`` text,
    in order of appearance, those whose version is ``cuda_major`` first."""
    paths: list[str] = []
    for line in maps.splitlines():
        fields = line.split(None, 5)  # address perms offset dev inode [path]
        path = fields[5].strip() if len(fields) == 6 else ""
        if _LIB_NAME.search(path) and path not in paths:
            paths.append(path)
    if cuda_major is not None:
        paths.sort(key=lambda p: not p.endswith(f".so.{cuda_major}") and
                   f".so.{cuda_major}." not in p)
    return paths


def candidates(cuda_major: int | None) -> list[str]:
    """Where to look for cuBLAS: the loaded copies first, then the loader's search path."""
    try:
        with open("/proc/self/maps") as f:
            found = loaded_cublas(f.read(), cuda_major)
    except OSError:
        found = []
    names = ([f"libcublas.so.{cuda_major}"] if cuda_major else []) + ["libcublas.so"]
    return found + names


class CublasLibrary:
    """``cublasGemmEx`` through ``ctypes`` on one handle per device (see the module
    docstring). ``path``: the shared library (a stand-in in the CPU tests)."""

    def __init__(self, path: str):
        self.path = path
        self._lib = ctypes.CDLL(path)
        self._fn = {name: self._function(name, argtypes) for name, argtypes in _PROTOTYPES.items()}
        self._handles: dict[int, _c_void_p] = {}
        self._lock = threading.Lock()

    def _function(self, name, argtypes):
        for symbol in (name + "_v2", name):
            fn = getattr(self._lib, symbol, None)
            if fn is not None:
                fn.argtypes, fn.restype = argtypes, _c_int
                return fn
        raise CublasError(f"{self.path} has no {name}_v2 / {name}")

    def _call(self, name, *args) -> None:
        status = self._fn[name](*args)
        if status != 0:
            raise CublasError(f"{name} returned cuBLAS status {status} ({self.path})")

    def prepare(self, device: int) -> None:
        """Create the handle of ``device`` (the current device) if it does not exist yet.
        Call outside a capture."""
        with self._lock:
            if device in self._handles:
                return
            handle = _c_void_p()
            self._call("cublasCreate", ctypes.byref(handle))
            self._call("cublasSetPointerMode", handle, _POINTER_MODE_HOST)
            self._call("cublasSetMathMode", handle, _DEFAULT_MATH)
            self._handles[device] = handle

    def has_handle(self, device: int) -> bool:
        return device in self._handles

    def gemm_ex(self, device: int, stream: int, args) -> None:
        """One ``cublasGemmEx`` on ``stream`` with ``args`` (``_cublas.GemmExArgs``)."""
        handle = self._handles[device]
        self._call("cublasSetStream", handle, _c_void_p(stream))
        self._call("cublasGemmEx", handle, *args.after_handle())


_LIBRARY: CublasLibrary | None = None
_LIBRARY_ERROR: str | None = None


def library(cuda_major: int | None) -> CublasLibrary:
    """The process's ``CublasLibrary`` (the first candidate that loads and has the
    functions; ``CUTRANS_CUBLAS_LIBRARY`` names one explicitly); raises ``CublasError``
    saying what was tried."""
    global _LIBRARY, _LIBRARY_ERROR
    if _LIBRARY is None and _LIBRARY_ERROR is None:
        tried = []
        explicit = os.environ.get("CUTRANS_CUBLAS_LIBRARY")
        for path in [explicit] if explicit else candidates(cuda_major):
            try:
                _LIBRARY = CublasLibrary(path)
                break
            except (OSError, CublasError) as exc:
                tried.append(f"{path}: {exc}")
        else:
            _LIBRARY_ERROR = "no usable cuBLAS library (" + "; ".join(tried) + ")"
    if _LIBRARY is None:
        raise CublasError(_LIBRARY_ERROR)
    return _LIBRARY
