"""CPU emulation of the CUDA kernels (g++ + ctypes).

``EmulatedModule`` mirrors ``cupy.RawModule``: it compiles a ``.cu`` source together with the
emulation header ``cuda_emu.h`` into a cached shared library and launches its kernels on numpy
arrays, one block after another, with fibers (deterministic) or one OS thread per CUDA thread
(for ThreadSanitizer). See ``launcher.py`` for the calling contract and ``cuda_emu.h`` for what
a kernel may rely on.
"""
from ._build import cache_dir, sanitizer_env, toolchain_description
from ._errors import BuildError, EmulationError, ToolchainWarning
from .launcher import EmulatedKernel, EmulatedModule

__all__ = ["EmulatedModule", "EmulatedKernel", "EmulationError", "BuildError", "ToolchainWarning", "cache_dir",
           "sanitizer_env", "toolchain_description"]
