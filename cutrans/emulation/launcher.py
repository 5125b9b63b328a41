"""EmulatedModule / EmulatedKernel: a ``cupy.RawModule`` look-alike that runs on the CPU.

Contract::

    mod = EmulatedModule(code, name_expressions, options=(), include_dirs=(), mode="fiber",
                         order="forward", sanitizer=None, seed=0, filename="kernel.cu")
    k = mod.get_function("my_kernel<float, 128>")
    k(grid, block, args, shared_mem=0)

* ``args``: a tuple of C-contiguous numpy arrays (passed as device pointers) and numpy scalars
  (np.int32/uint32/int64/uint64/float32/float64/bool_); Python ints/floats raise TypeError.
  The count must equal the kernel's parameter count; a scalar's size and kind (integer, float,
  bool) must match its parameter; an array's itemsize must match the pointee (uint8/int8
  arrays and void/char pointees are raw bytes); a read-only array cannot go to a non-const
  pointer. Violations raise TypeError naming the kernel.
* errors inside the kernel (deadlock, divergent barrier, bad launch configuration) raise
  EmulationError. ``k.max_dynamic_shared_size_bytes`` (default 48 KiB) bounds ``shared_mem``.
* ``mode``: "fiber" (deterministic, fast; ``order`` = forward/reverse/shuffle, ``seed``) or
  "thread" (one OS thread per CUDA thread, for ThreadSanitizer). sanitizer="thread" requires
  mode="thread". A sanitized module needs the sanitizer runtime (and libstdc++) preloaded in the
  process: run it in a child process with ``env=cutrans.emulation.sanitizer_env("address")``.
* ``filename`` names the source in diagnostics (barrier sites, sanitizer reports).
* launches on one library are serialised (``__shared__`` storage is process-global).
* static ``__shared__`` storage (``mod.shared_ranges``, found by ``_build`` in the module's own
  object file) is checked when the module is loaded: every range must lie inside a writable
  load segment of the module, outside RELRO and the TLS image, else EmulationError names the
  symbol and offset and the library's registration is left as it was: poisoning never writes
  outside the module's writable storage.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Sequence

import numpy as np

from . import _build
from ._errors import EmulationError

_MODES = {"fiber": 0, "thread": 1}
_ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}
_SCALARS = {np.bool_: "b", np.int8: "i", np.int16: "i", np.int32: "i", np.int64: "i",
            np.uint8: "u", np.uint16: "u", np.uint32: "u", np.uint64: "u",
            np.float16: "h", np.float32: "f", np.float64: "f"}
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024


class _LaunchCfg(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3),
                ("shared_mem", ctypes.c_uint64), ("max_dynamic_shared", ctypes.c_uint64),
                ("stack_bytes", ctypes.c_uint64), ("seed", ctypes.c_uint64),
                ("mode", ctypes.c_int32), ("order", ctypes.c_int32)]


class _ParamInfo(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("pointee_size", ctypes.c_uint64), ("kind", ctypes.c_char),
                ("is_pointer", ctypes.c_char), ("pointee_const", ctypes.c_char),
                ("pointee_kind", ctypes.c_char), ("pad", ctypes.c_uint32)]


MIN_STACK_KB = 16


def stack_kb(sanitizer) -> int:
    """Stack of each emulated CUDA thread, KiB: ``$CUTRANS_EMU_STACK_KB`` or 64 (256 with a
    sanitizer); EmulationError naming the variable for a bad value."""
    text = os.environ.get("CUTRANS_EMU_STACK_KB", "256" if sanitizer else "64")
    try:
        kb = int(text)
    except ValueError:
        kb = -1
    if kb < MIN_STACK_KB:
        raise EmulationError(f"CUTRANS_EMU_STACK_KB: expected an integer >= {MIN_STACK_KB} "
                             f"(KiB of stack per emulated thread), got {text!r}")
    return kb


def _dims(v, what) -> tuple[int, int, int]:
    if isinstance(v, (int, np.integer)):
        v = (int(v),)
    v = tuple(int(x) for x in v)
    if not 1 <= len(v) <= 3:
        raise ValueError(f"{what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    if any(x < 1 or x >= 2**32 for x in v):
        raise EmulationError(f"invalid launch configuration: {what}={v!r}")
    return v + (1,) * (3 - len(v))


def _sanitizer_runtime_loaded(name: str) -> bool:
    try:
        with open("/proc/self/maps") as f:
            return f"lib{name}.so" in f.read()
    except OSError:  # pragma: no cover
        return True


class EmulatedModule:
    """Compile ``code`` with g++ against the emulation header; mirror of cupy.RawModule."""

    def __init__(self, code: str, name_expressions: Sequence[str], options: Sequence[str] = (),
                 include_dirs: Sequence[str] = (), mode: str = "fiber", order: str = "forward",
                 sanitizer: str | None = None, seed: int = 0, filename: str = "kernel.cu"):
        if mode not in _MODES:
            raise ValueError(f"mode must be 'fiber' or 'thread', not {mode!r}")
        if order not in _ORDERS:
            raise ValueError(f"order must be 'forward', 'reverse' or 'shuffle', not {order!r}")
        if sanitizer == "thread" and mode != "thread":
            raise ValueError("sanitizer='thread' needs mode='thread' (ThreadSanitizer does not follow fibers)")
        if isinstance(name_expressions, str):
            raise TypeError("name_expressions must be a sequence of strings")
        self.code, self.name_expressions = code, tuple(name_expressions)
        self.options, self.include_dirs = tuple(options), tuple(str(d) for d in include_dirs)
        self.mode, self.order, self.sanitizer, self.seed = mode, order, sanitizer, int(seed)
        if sanitizer is not None:
            rt = {"address": "asan", "thread": "tsan"}.get(sanitizer)
            if rt and not _sanitizer_runtime_loaded(rt):
                raise EmulationError(
                    f"sanitizer={sanitizer!r} needs its runtime loaded first: run Python with "
                    f"LD_PRELOAD=\"$(g++ -print-file-name=lib{rt}.so) $(g++ -print-file-name=libstdc++.so)\" "
                    f"(see cutrans.emulation.sanitizer_env)")
        built = _build.build(f'#line 1 "{filename}"\n' + code, self.name_expressions, self.options,
                             self.include_dirs, sanitizer)
        self.path, self.compiled, self.shared_ranges = built.path, built.compiled, tuple(built.ranges)
        self._lib = ctypes.CDLL(self.path)
        self._set_static_shared(built.static_libstdcxx)
        self.static_shared_bytes = sum(r.size for r in self.shared_ranges)
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(self.path, threading.Lock())
        self._kernels: dict[str, EmulatedKernel] = {}

    def _set_static_shared(self, static_libstdcxx: bool) -> None:
        ranges, n = self.shared_ranges, len(self.shared_ranges)
        offs = (ctypes.c_ulonglong * max(n, 1))(*[r.offset for r in ranges])
        sizes = (ctypes.c_ulonglong * max(n, 1))(*[r.size for r in ranges])
        bad = self._lib.cutrans_emu_set_static_shared(offs, sizes, ctypes.c_int(n))
        if bad == -1:
            return
        where = (f"static __shared__ storage {ranges[bad].name} (offset 0x{ranges[bad].offset:x}, "
                 f"{ranges[bad].size} bytes) is not inside a writable load segment (outside RELRO and "
                 f"the TLS image)") if 0 <= bad < n else "its load segments were not found"
        raise EmulationError(f"{self.path}: {where}; refusing to poison it. Module built by "
                             f"{_build.toolchain_description('static' if static_libstdcxx else 'dynamic')}")

    def get_function(self, name: str) -> "EmulatedKernel":
        if name not in self.name_expressions:
            raise KeyError(f"{name!r} is not one of the name expressions {self.name_expressions}")
        if name not in self._kernels:
            self._kernels[name] = EmulatedKernel(self, name, self.name_expressions.index(name))
        return self._kernels[name]


class EmulatedKernel:
    """One kernel of an EmulatedModule; call as ``k(grid, block, args, shared_mem=0)``."""

    def __init__(self, module: EmulatedModule, name: str, index: int):
        self.module, self.name = module, name
        self.max_dynamic_shared_size_bytes = DEFAULT_MAX_DYNAMIC_SHARED
        self._launch = getattr(module._lib, f"cutrans_emu_launch_{index}")
        self._launch.restype = ctypes.c_int
        sig = getattr(module._lib, f"cutrans_emu_sig_{index}")
        buf = (_ParamInfo * 256)()
        n = sig(buf, 256)
        self.params = [buf[i] for i in range(n)]

    @property
    def num_params(self) -> int:
        return len(self.params)

    def _marshal(self, args) -> tuple[list, ctypes.Array]:
        if not isinstance(args, tuple):
            raise TypeError(f"{self.name}: args must be a tuple")
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: takes {len(self.params)} argument(s), {len(args)} given")
        keep, ptrs = [], (ctypes.c_void_p * max(len(args), 1))()
        for i, (a, p) in enumerate(zip(args, self.params)):
            where = f"{self.name}: argument {i}"
            if isinstance(a, np.ndarray):
                if p.is_pointer != b"\x01":
                    raise TypeError(f"{where}: an array passed to a non-pointer parameter")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{where}: array must be C-contiguous")
                pk, ps = p.pointee_kind.decode(), p.pointee_size
                raw = a.dtype.itemsize == 1 and a.dtype.kind in "iub" or pk in "vo" or ps == 1
                if not raw and a.dtype.itemsize != ps:
                    raise TypeError(f"{where}: array of {a.dtype} (itemsize {a.dtype.itemsize}) passed "
                                    f"to a pointer to a {ps}-byte type")
                if not raw and (pk in "iu" and a.dtype.kind == "f" or pk in "fh" and a.dtype.kind in "iub" and
                                not (pk == "h" and a.dtype.kind == "u")):
                    raise TypeError(f"{where}: array of {a.dtype} passed to a pointer of kind {pk!r}")
                if not a.flags.writeable and p.pointee_const != b"\x01":
                    raise TypeError(f"{where}: read-only array passed to a non-const pointer")
                v = ctypes.c_void_p(a.ctypes.data)
                keep += [a, v]
            elif isinstance(a, np.generic) and type(a) in _SCALARS or isinstance(a, np.generic) and \
                    a.dtype.kind == "V":
                if p.is_pointer == b"\x01":
                    raise TypeError(f"{where}: a scalar passed to a pointer parameter")
                if a.dtype.itemsize != p.size:
                    raise TypeError(f"{where}: {a.dtype} scalar ({a.dtype.itemsize} bytes) passed to a "
                                    f"{p.size}-byte parameter")
                sk, pk = _SCALARS.get(type(a), "o"), p.kind.decode()
                ok = sk == pk or {sk, pk} <= {"i", "u"} or "o" in (sk, pk)
                if not ok:
                    raise TypeError(f"{where}: {a.dtype} scalar passed to a parameter of kind {pk!r}")
                v = ctypes.create_string_buffer(a.tobytes(), max(a.dtype.itemsize, 8))
                keep.append(v)
            else:
                raise TypeError(f"{where}: expected a numpy array or numpy scalar (np.int32, np.float32, ...), "
                                f"got {type(a).__name__}; Python ints/floats are ambiguous")
            ptrs[i] = ctypes.cast(ctypes.byref(v), ctypes.c_void_p)
        return keep, ptrs

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None):
        m = self.module
        keep, ptrs = self._marshal(args)
        cfg = _LaunchCfg()
        cfg.grid[:] = _dims(grid, "grid")
        cfg.block[:] = _dims(block, "block")
        if int(shared_mem) < 0:
            raise EmulationError("invalid launch configuration: negative shared_mem")
        cfg.shared_mem = int(shared_mem)
        cfg.max_dynamic_shared = int(self.max_dynamic_shared_size_bytes)
        cfg.stack_bytes = stack_kb(m.sanitizer) * 1024
        cfg.seed = m.seed
        cfg.mode, cfg.order = _MODES[m.mode], _ORDERS[m.order]
        err = ctypes.create_string_buffer(4096)
        with m._lock:
            rc = self._launch(ctypes.byref(cfg), ptrs, err, ctypes.c_size_t(len(err)))
        del keep
        if rc != 0:
            raise EmulationError(f"{self.name}: {err.value.decode(errors='replace')}")
