"""Misuse and bugs become Python exceptions: EmulationError (in-process, no hang) or TypeError."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from emu_support import KERNELS, source
from cutrans.emulation import EmulatedModule, EmulationError


@pytest.mark.parametrize("mode,order", [("fiber", "forward"), ("fiber", "reverse"), ("thread", "forward")])
def test_divergent_barrier_deadlock_is_reported(emu, mode, order):
    k = emu("bugs.cu", mode, order).get_function("divergent_deadlock")
    t0 = time.perf_counter()
    with pytest.raises(EmulationError, match=r"deadlock.*__syncthreads at bugs\.cu:\d+.*__syncwarp\(0xffffffff\)"):
        k(2, 64, (np.zeros(64, np.float32),))
    assert time.perf_counter() - t0 < 10
    # the library is still usable afterwards
    out = np.zeros(128, np.float32)
    emu("bugs.cu", mode, order).get_function("oob_read")(1, 128, (np.ones(128, np.float32), out, np.int32(127)))
    assert (out[:127] == 2).all()


@pytest.mark.parametrize("mode", ["fiber", "thread"])
def test_divergent_barrier_sites(emu, mode):
    with pytest.raises(EmulationError, match=r"divergent __syncthreads.*bugs\.cu:\d+"):
        emu("bugs.cu", mode).get_function("divergent_sites")(1, 32, (np.zeros(32, np.float32),))


@pytest.mark.parametrize("mode", ["fiber", "thread"])
def test_warp_mask_mismatch(emu, mode):
    with pytest.raises(EmulationError, match=r"mask|mismatch"):
        emu("bugs.cu", mode).get_function("mask_mismatch")(1, 32, (np.zeros(32, np.float32),))


def test_bad_launch_configuration(emu):
    mod = emu("misc.cu")
    k = mod.get_function("read_uninit<64>")
    a, b = np.zeros(64, np.float32), np.zeros(64, np.float32)
    with pytest.raises(EmulationError, match=r"block dimension over \(1024, 1024, 64\)"):
        k(1, (1025,), (a, b, np.int32(0)))
    with pytest.raises(EmulationError, match="1025 threads > 1024"):
        k(1, (5, 5, 41), (a, b, np.int32(0)))
    with pytest.raises(EmulationError, match="block dimension"):
        k(1, (1, 1, 65), (a, b, np.int32(0)))
    with pytest.raises(EmulationError, match="shared_mem=49153"):
        k(1, 64, (a, b, np.int32(0)), shared_mem=48 * 1024 + 1)
    with pytest.raises(EmulationError, match=r"grid=\(1, 0\)"):
        k((1, 0), 64, (a, b, np.int32(0)))
    k2 = EmulatedModule(source("misc.cu"), ["read_uninit<64>"], include_dirs=[str(KERNELS)]).get_function(
        "read_uninit<64>")
    k2.max_dynamic_shared_size_bytes = 100 * 1024
    k2(1, 64, (a, b, np.int32(64)), shared_mem=100 * 1024)  # opted in, like cudaFuncSetAttribute


def test_argument_checks(emu):
    k = emu("wavefront.cu").get_function("alpha_wavefront<float>")
    f = np.zeros(8, np.float32)
    good = (f, f, f, np.int32(1), np.int32(1))
    k(1, 32, good)
    with pytest.raises(TypeError, match=r"alpha_wavefront<float>.*takes 5 argument\(s\), 4 given"):
        k(1, 32, good[:4])
    with pytest.raises(TypeError, match="Python ints/floats"):
        k(1, 32, (f, f, f, 1, np.int32(1)))
    with pytest.raises(TypeError, match="Python ints/floats"):
        k(1, 32, (f, f, f, np.int32(1), 1.0))
    with pytest.raises(TypeError, match="8 bytes.*4-byte"):
        k(1, 32, (f, f, f, np.int64(1), np.int32(1)))
    with pytest.raises(TypeError, match="kind"):
        k(1, 32, (f, f, f, np.float32(1), np.int32(1)))
    with pytest.raises(TypeError, match="float64"):
        k(1, 32, (f.astype(np.float64), f, f, np.int32(1), np.int32(1)))
    with pytest.raises(TypeError, match="C-contiguous"):
        k(1, 32, (np.zeros(16, np.float32)[::2], f, f, np.int32(1), np.int32(1)))
    with pytest.raises(TypeError, match="non-pointer"):
        k(1, 32, (f, f, f, np.zeros(1, np.int32), np.int32(1)))
    with pytest.raises(TypeError, match="scalar passed to a pointer"):
        k(1, 32, (np.float32(0), f, f, np.int32(1), np.int32(1)))
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    k(1, 32, (ro, ro, f, np.int32(1), np.int32(1)))  # const pointers accept read-only arrays
    with pytest.raises(TypeError, match="read-only"):
        k(1, 32, (f, f, ro, np.int32(1), np.int32(1)))
    k(1, 32, (f[2:], f, f, np.int32(1), np.int32(1)))  # a contiguous slice is fine
    k(1, 32, (f, f, f, np.uint32(1), np.int32(1)))  # an unsigned scalar of the same size is accepted
    with pytest.raises(KeyError):
        emu("wavefront.cu").get_function("alpha_wavefront<half>")


def test_constructor_checks():
    with pytest.raises(ValueError):
        EmulatedModule("", [], mode="warp")
    with pytest.raises(ValueError):
        EmulatedModule("", [], order="random")
    with pytest.raises(ValueError, match="mode='thread'"):
        EmulatedModule("", [], sanitizer="thread")


def test_trap_and_build_errors():
    from cutrans.emulation import BuildError
    mod = EmulatedModule('__global__ void t(int* p) { if (threadIdx.x == 3) __trap(); p[threadIdx.x] = 1; }',
                         ["t"])
    with pytest.raises(EmulationError, match=r"thread 3: __trap\(\)"):
        mod.get_function("t")(1, 8, (np.zeros(8, np.int32),))
    with pytest.raises(BuildError, match="undeclared|not declared"):
        EmulatedModule("__global__ void t(int* p) { p[0] = undeclared_thing; }", ["t"])


def test_cache_hit_and_header_invalidation(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTRANS_EMU_CACHE", str(tmp_path / "cache"))
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "cuda_compat.cuh").write_text((KERNELS / "cuda_compat.cuh").read_text())
    (inc / "extra.cuh").write_text("#define SCALE 2\n")
    code = '#include "cuda_compat.cuh"\n#include "extra.cuh"\n__global__ void s(int* p) { p[threadIdx.x] = SCALE; }\n'
    t0 = time.perf_counter()
    m1 = EmulatedModule(code, ["s"], include_dirs=[str(inc)])
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    m2 = EmulatedModule(code, ["s"], include_dirs=[str(inc)])
    t_hit = time.perf_counter() - t0
    assert m1.compiled and not m2.compiled and m1.path == m2.path
    assert t_hit < 0.5 and t_hit < t_build / 3, (t_build, t_hit)
    out = np.zeros(4, np.int32)
    m2.get_function("s")(1, 4, (out,))
    assert (out == 2).all()
    (inc / "extra.cuh").write_text("#define SCALE 3\n")  # an edited header must not load a stale .so
    m3 = EmulatedModule(code, ["s"], include_dirs=[str(inc)])
    assert m3.compiled and m3.path != m1.path
    m3.get_function("s")(1, 4, (out,))
    assert (out == 3).all()
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    assert not leftovers  # temporary build folders are removed
    assert os.environ["CUTRANS_EMU_CACHE"] in m3.path


def test_parallel_builds_are_safe(tmp_path):
    """Several processes building the same new module at once all succeed and agree."""
    import subprocess
    import sys
    child = ("import numpy as np\nfrom cutrans.emulation import EmulatedModule\n"
             "m = EmulatedModule('__global__ void k(int* p) { p[threadIdx.x] = 7 * threadIdx.x; }', ['k'])\n"
             "o = np.zeros(8, np.int32); m.get_function('k')(1, 8, (o,)); assert (o == 7 * np.arange(8)).all()\n"
             "print(m.path)\n")
    env = dict(os.environ, CUTRANS_EMU_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", child], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o.strip() for o, _ in outs}) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".cu", ".json", ".so"]
