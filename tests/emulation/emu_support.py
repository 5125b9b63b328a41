"""Helpers for the emulation / NVRTC tests (imported by name: tests/emulation is on sys.path)."""
from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"            # cuda_compat.cuh
TEST_KERNELS = Path(__file__).resolve().parent / "kernels"


def source(name: str) -> str:
    return (TEST_KERNELS / name).read_text()


def names(name: str) -> list[str]:
    from cutrans.compile_check import names_in_source
    return names_in_source(source(name))


@functools.lru_cache(maxsize=None)
def module(name: str, mode: str = "fiber", order: str = "forward", seed: int = 0):
    """EmulatedModule of a test kernel file (memoised per process)."""
    from cutrans.emulation import EmulatedModule
    return EmulatedModule(source(name), names(name), include_dirs=[str(KERNELS)], mode=mode, order=order,
                          seed=seed, filename=name)
