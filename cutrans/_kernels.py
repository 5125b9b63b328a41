"""The one kernel loader: registry of CUDA sources, name expressions, compile options, caches.

Every path that builds the kernels uses this module: the CuPy backend (``cupy.RawModule``,
compiled lazily per device), the CPU emulation (``cutrans.emulation.EmulatedModule``) and the
compile-check tests (``cutrans.compile_check``). Nothing here touches a device or imports
CuPy at import time.

Registry: source file -> kernel templates ``name<T..., BLOCK>``; ``T...`` are C++ storage or
compute types (``_dtypes.DTYPES``), ``BLOCK`` threads per block. Each template carries its
declared resource limits (checked by the compile-check tests on sm_80/sm_90).

The source hash is computed once per process (edit kernels -> restart Python).
Environment: ``CUTRANS_KERNEL_DEBUG=1`` prints every launch (kernel, grid, block; registers and
static shared memory on a GPU) to stderr.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
import sys
import threading
from dataclasses import dataclass

from ._dtypes import DTYPES

BLOCKS = (32, 128, 256)  # threads per block of the block-sized kernel templates
JOINT_BACKWARD_BLOCK = 256  # threads per block of joint_backward_*: groups of `lanes` threads
JOINT_BACKWARD_LANES = (32, 64, 128, 256)  # threads per row: one per 16-byte word of H
# their shared memory: the groups' partial sums, up to 8 float32 values per thread
JOINT_BACKWARD_SHARED_BYTES = JOINT_BACKWARD_BLOCK * 8 * 4
ROW_BLOCK = 256  # threads per block of the row-wise kernels (kRowBlock in common.cuh)
ROW_TPR = (32, ROW_BLOCK)  # their template: threads per row (a warp, or the whole block)
STORAGE = ("float16", "bfloat16", "float32", "float64")  # storage dtypes (all of DTYPES)
COMPUTE = ("float32", "float64")  # compute dtypes
MAX_GRID = 1 << 22  # blocks per launch; kernels loop (grid-stride) over the rest


@dataclass(frozen=True)
class KernelSpec:
    """One kernel template and its instantiations; limits are per instantiation.

    ``types``: the type-argument tuples it is instantiated with (dtype names of
    ``_dtypes.DTYPES``), e.g. ``(("float32",), ...)`` for ``row_stats<float, B>`` or
    ``(("float16", "float32"), ...)`` for ``joint_backward_enc<__half, float, B>``.
    """

    template: str
    source: str
    types: tuple[tuple[str, ...], ...]
    max_registers: int
    max_shared_bytes: int  # static shared memory, bytes
    blocks: tuple[int, ...] = BLOCKS
    general: tuple[bool, ...] = ()  # (False, True): a trailing ``bool GENERAL`` argument

    def name(self, types, block: int, general: bool | None = None) -> str:
        types = (types,) if isinstance(types, str) else tuple(types)
        tail = "" if general is None else (", true" if general else ", false")
        return f"{self.template}<{''.join(DTYPES[t][1] + ', ' for t in types)}{block}{tail}>"

    def names(self) -> list[str]:
        return [self.name(t, b, g) for t in self.types for b in self.blocks
                for g in (self.general or (None,))]


_ONE_STORAGE = tuple((d,) for d in STORAGE)
_ONE_COMPUTE = tuple((d,) for d in COMPUTE)
# joint backward outputs: the storage type, or float32 accumulators for 16-bit storage
_STORAGE_OUT = tuple((d, d) for d in STORAGE) + (("float16", "float32"),
                                                  ("bfloat16", "float32"))

KERNELS: dict[str, KernelSpec] = {s.template: s for s in (
    KernelSpec("row_stats", "row_ops.cu", _ONE_STORAGE, max_registers=72, max_shared_bytes=128,
               blocks=ROW_TPR, general=(False, True)),
    KernelSpec("row_grad", "row_ops.cu", _ONE_STORAGE, max_registers=96, max_shared_bytes=128,
               blocks=ROW_TPR, general=(False, True)),
    KernelSpec("check_targets", "row_ops.cu", ((),), max_registers=32, max_shared_bytes=0),
    # lattice: one block per (sample, sweep), latency-bound (the diagonals live in dynamic
    # shared memory); with four (double: two) diagonals' loads in flight, in unrolled rounds,
    # it takes 48-64 registers on sm_80/90 (strided (AoS) per-row values)
    KernelSpec("lattice", "lattice.cu", _ONE_COMPUTE, max_registers=80, max_shared_bytes=16),
    KernelSpec("lattice_grad", "lattice.cu", _ONE_COMPUTE, max_registers=48,
               max_shared_bytes=0, blocks=ROW_TPR),  # launched with ROW_BLOCK: a row a thread
    KernelSpec("lattice_arcs", "lattice.cu", _ONE_COMPUTE, max_registers=96,
               max_shared_bytes=5 * 64 * 4 + 32),
    KernelSpec("joint_forward", "joint.cu", _ONE_STORAGE, max_registers=56, max_shared_bytes=0,
               blocks=ROW_TPR),
    # a 16-byte word per thread, four rows' words in flight: 8 accumulators per row for
    # 16-bit types; __launch_bounds__(256, 2): at most 128 registers (sm_70-sm_90: 108-128,
    # float64 72-80, no spills)
    KernelSpec("joint_backward_enc", "joint.cu", _STORAGE_OUT, max_registers=128,
               max_shared_bytes=JOINT_BACKWARD_SHARED_BYTES, blocks=(JOINT_BACKWARD_BLOCK,)),
    KernelSpec("joint_backward_pred", "joint.cu", _STORAGE_OUT, max_registers=128,
               max_shared_bytes=JOINT_BACKWARD_SHARED_BYTES, blocks=(JOINT_BACKWARD_BLOCK,)),
)}


def sources() -> list[str]:
    """The .cu files of the registry, in a fixed order."""
    return sorted({s.source for s in KERNELS.values()})


def name_expressions(source: str) -> list[str]:
    """Every instantiation compiled from ``source`` (all dtypes and block sizes)."""
    return [n for s in KERNELS.values() if s.source == source for n in s.names()]


def pick_block(width: int) -> int:
    """Threads per block for work of ``width`` elements per row / per diagonal."""
    return 32 if width <= 64 else (128 if width <= 512 else 256)


def lattice_block(max_diag: int) -> int:
    """Threads per block of the RNN-T ``lattice``: a thread per cell of the longest diagonal
    where a block size of ``BLOCKS`` covers it (a thread's further cells read their
    log-probabilities without the prefetch, on the wavefront's critical path)."""
    return next((b for b in BLOCKS if max_diag <= b), BLOCKS[-1])


def joint_backward_lanes(H: int, itemsize: int) -> int:
    """Threads per row of ``joint_backward_*`` (``joint_grad_sums``): a thread per 16-byte
    word of a row of H elements (per element for float64 or H not a multiple of a word),
    rounded up to a power of two; the block's ``JOINT_BACKWARD_BLOCK // lanes`` groups of
    lanes split the rows of a sum between them (a function of H and the dtype only: the
    order of the sums, hence the bits, do not depend on the batch)."""
    n = 16 // itemsize if itemsize < 8 and H % (16 // itemsize) == 0 else 1
    words = H // n
    return next((b for b in JOINT_BACKWARD_LANES if words <= b), JOINT_BACKWARD_LANES[-1])


LATTICE_SHARED_BYTES = 48 * 1024 - 256  # dynamic shared memory of a lattice block, at most


def lattice_diag_cells(max_diag: int, itemsize: int) -> int:
    """Cells per diagonal buffer in the lattice's shared memory (two buffers): the longest
    diagonal, if it fits; longer samples keep their diagonals in their workspace rows."""
    return max(1, min(int(max_diag), LATTICE_SHARED_BYTES // (2 * itemsize)))


def pick_row_threads(width: int) -> int:
    """Threads per row of the row-wise kernels: a warp (many short rows in flight per SM),
    or a whole block for rows of more than 8192 elements."""
    return 32 if width <= 8192 else ROW_BLOCK


def row_grid(n_rows: int, tpr: int) -> int:
    """Blocks of the row-wise kernels for ``n_rows`` rows at ``tpr`` threads per row."""
    per_block = ROW_BLOCK // tpr
    return -(-int(n_rows) // per_block)


# ------------------------------------------------------------------ sources and options
def kernels_dir() -> str:
    """Filesystem folder of the kernel sources (editable install or wheel)."""
    return str(importlib.resources.files("cutrans.kernels"))


def read_source(name: str) -> str:
    return importlib.resources.files("cutrans.kernels").joinpath(name).read_text()


def folder_hash(folder) -> str:
    """sha256 (16 hex digits) over the names and contents of a folder's .cu/.cuh files."""
    h = hashlib.sha256()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".cu", ".cuh")):
            h.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
    """Hash of the kernels folder, passed as ``-D CUTRANS_SOURCE_HASH=0x...``.

    CuPy's compile cache keys on the main source text and the options only, not on the
    ``#include``d headers: the hash makes an edited header produce a new cache entry.
    """
    return folder_hash(importlib.resources.files("cutrans.kernels"))


def compile_options() -> tuple[str, ...]:
    """NVRTC options of every build (RawModule adds its own -arch and CuPy include paths)."""
    return ("--std=c++17", f"-I{kernels_dir()}", f"-DCUTRANS_SOURCE_HASH=0x{source_hash()}")


def debug_enabled() -> bool:
    return os.environ.get("CUTRANS_KERNEL_DEBUG", "") not in ("", "0")


# ------------------------------------------------------------------ module providers
class _Provider:
    """Kernel objects by (template, dtype, block); subclasses build the modules."""

    name = "?"

    def __init__(self):
        self._lock = threading.Lock()
        self._modules: dict = {}
        self._kernels: dict = {}

    def _key(self):
        return ()

    def _build(self, source: str):
        raise NotImplementedError

    def function(self, template: str, types, block: int, general: bool | None = None):
        spec = KERNELS[template]
        key = (self._key(), template, types, block, general)
        k = self._kernels.get(key)
        if k is None:
            with self._lock:
                mkey = (self._key(), spec.source, source_hash(), compile_options())
                mod = self._modules.get(mkey)
                if mod is None:
                    mod = self._modules[mkey] = self._build(spec.source)
                k = self._kernels[key] = mod.get_function(spec.name(types, block, general))
        return k

    def launch(self, template: str, types, block: int, grid: int, args: tuple, *,
               threads: int | None = None, shared_mem: int = 0,
               general: bool | None = None) -> None:
        """Launch ``template<types..., block[, general]>`` on ``min(grid, MAX_GRID)`` blocks
        (grid >= 1) of ``threads`` threads (default ``block``) with ``shared_mem`` bytes of
        dynamic shared memory. ``types``: a dtype name or a tuple of them (``KernelSpec``)."""
        k = self.function(template, types, block, general)
        grid = max(1, min(int(grid), MAX_GRID))
        threads = block if threads is None else threads
        if debug_enabled():
            self._debug(k, KERNELS[template].name(types, block, general), grid, threads)
        k((grid,), (threads,), args, shared_mem=shared_mem)

    def _debug(self, k, name, grid, block):
        print(f"cutrans[{self.name}] {name} grid=({grid},) block=({block},)", file=sys.stderr)


class CupyProvider(_Provider):
    """``cupy.RawModule`` per (device id, source, hash, options); launches on the current stream."""

    name = "cupy"

    def _key(self):
        import cupy
        return cupy.cuda.Device().id

    def _build(self, source: str):
        import cupy
        return cupy.RawModule(code=read_source(source), options=compile_options(),
                              name_expressions=name_expressions(source))

    def _debug(self, k, name, grid, block):
        print(f"cutrans[cupy] {name} grid=({grid},) block=({block},) registers={k.num_regs} "
              f"static_shared={k.shared_size_bytes}B local={k.local_size_bytes}B", file=sys.stderr)


class EmulatedProvider(_Provider):
    """``cutrans.emulation.EmulatedModule`` (CPU, g++): same sources, names and options."""

    name = "emulated"

    def __init__(self, mode: str = "fiber", order: str = "forward", sanitizer=None):
        super().__init__()
        self.mode, self.order, self.sanitizer = mode, order, sanitizer

    def _build(self, source: str):
        from .emulation import EmulatedModule
        return EmulatedModule(read_source(source), name_expressions(source),
                              options=compile_options(), include_dirs=(kernels_dir(),),
                              mode=self.mode, order=self.order, sanitizer=self.sanitizer)
