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


def check_poison_kinds(mod) -> None:
    """Every kind of static ``__shared__`` storage of shared_kinds.cu is poisoned before each block
    (block 0 writes 1, later blocks must read NaN)."""
    import numpy as np
    for name, n, kinds in (("poison_kinds<float, 32>", 32, 3), ("poison_kinds<double, 64>", 64, 3),
                           ("poison_plain", 32, 1)):
        out = np.zeros(3 * kinds * n)
        mod.get_function(name)(3, n, (out,))
        out = out.reshape(3, kinds, n)
        assert (out[0] == 1).all(), f"{name}: block 0 lost its writes"
        stale = np.argwhere(~np.isnan(out[1:]))
        assert not stale.size, f"{name}: (block - 1, kind, thread) read stale shared memory: {stale[:5]}"


def _writable_mappings() -> list[tuple[int, int]]:
    """[start, end) of the writable mappings of this process, adjacent ones merged."""
    spans: list[tuple[int, int]] = []
    with open("/proc/self/maps") as f:
        for line in f:
            addr, perms = line.split()[:2]
            if perms[1] == "w":
                lo, hi = (int(x, 16) for x in addr.split("-"))
                if spans and spans[-1][1] == lo:
                    lo = spans.pop()[0]
                spans.append((lo, hi))
    return spans


def _load_base(path: str) -> int:
    import os
    real = os.path.realpath(path)
    # " (deleted)": another process (a concurrent test run) rebuilt the same module and
    # renamed it over the file this one loaded (same source and toolchain: same layout)
    ends = (" " + real, " " + real + " (deleted)")
    with open("/proc/self/maps") as f:
        starts = [int(ln.split("-")[0], 16) for ln in f if ln.rstrip().endswith(ends)
                  and int(ln.split()[2], 16) == 0]
    assert starts, f"{path} is not mapped in this process"
    return min(starts)


def library_owners() -> tuple[str, ...]:
    """The kernel templates of the registry (``_kernels.KERNELS``): the functions whose static
    ``__shared__`` arrays the library's modules may record."""
    from cutrans import _kernels
    return tuple(sorted({spec.template for spec in _kernels.KERNELS.values()}))


def assert_ranges_writable(mod, owners: tuple[str, ...]) -> None:
    """Every recorded static ``__shared__`` range of ``mod`` is the ``cutrans_shared`` section or a
    static of one of the functions ``owners``; each lies in writable, non-TLS sections of the .so
    and in a writable mapping of this process (where ``mod`` is loaded)."""
    from cutrans.emulation._elf import SHF_ALLOC, Elf
    lib, base, rw = Elf(mod.path), _load_base(mod.path), _writable_mappings()
    for r in mod.shared_ranges:
        assert r.name == "cutrans_shared" or any(r.name.startswith(f"_ZZ{len(f)}{f}I") for f in owners), r
        secs = [s for s in lib.sections if s.flags & SHF_ALLOC and s.size and
                s.addr < r.offset + r.size and r.offset < s.addr + s.size]
        assert secs and all(s.writable for s in secs), (r, secs)
        lo = base + r.offset
        assert any(a <= lo and lo + r.size <= b for a, b in rw), (r, hex(lo), "not in a writable mapping")
