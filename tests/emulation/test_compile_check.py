"""NVRTC compile checks without a GPU, exactly as cupy.RawModule compiles."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu_support import KERNELS, TEST_KERNELS, names, source

cc = pytest.importorskip("cutrans.compile_check")
try:
    cc.nvrtc_version()
except RuntimeError as e:  # pragma: no cover - CI installs cupy-cuda12x + the nvidia wheels
    pytest.skip(f"NVRTC unavailable: {e}", allow_module_level=True)

def _installed(dist: str) -> bool:
    from importlib import metadata
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


GOOD = ["reduce.cu", "wavefront.cu", "atomics.cu", "misc.cu", "bugs.cu", "spill.cu", "shared_kinds.cu"]


def test_archs_and_toolchain():
    archs = cc.nvrtc_archs()
    assert {"sm_75", "sm_80", "sm_90"} <= set(archs)
    major, minor = cc.nvrtc_version()
    if major == 12:
        assert "sm_70" in archs
    cc.compile_source("__global__ void k() {}", ["k"], arch="sm_80")
    lib = cc.nvrtc_library()
    assert lib and "libnvrtc" in lib
    if _installed("cupy-cuda12x"):  # CI: the nvidia-cuda-nvrtc-cu12 wheel, not /usr/local/cuda 13.0
        assert "site-packages/nvidia" in lib and major == 12 and minor >= 9, (lib, major, minor)
    inc = cc.wheel_cuda_include()
    opts = cc.rawmodule_options(include_dirs=[KERNELS], arch="sm_90")
    assert opts[0] == f"-I{inc}"
    assert not any("/usr/local/cuda" in o for o in opts), opts
    assert opts[-3:] == ("-ftz=true", "-arch=sm_90", "--device-as-default-execution-space")
    assert "-arch=compute_80" in cc.rawmodule_options(method="ptx")
    # the headers NVRTC sees are those of the runtime wheel matching NVRTC's major version
    probe = (f"#include <cuda_runtime_api.h>\nstatic_assert(CUDART_VERSION / 1000 == {major}, \"headers\");\n"
             "__global__ void k() {}\n")
    cc.compile_source(probe, ["k"])


def test_rawmodule_option_assembly_is_cupys():
    """Guards the private CuPy API this module relies on (pinned: cupy 14.x)."""
    import cupy
    from cupy._core import core
    from cupy.cuda import compiler
    assert cupy.__version__.split(".")[0] == "14"
    assembled = core.assemble_cupy_compiler_options(("-DX=1",))
    assert "-DX=1" in assembled and any(o.startswith("--std=") for o in assembled)
    assert callable(compiler._NVRTCProgram) and hasattr(compiler._NVRTCProgram, "compile")
    assert issubclass(compiler.CompileException, Exception)


@pytest.mark.parametrize("name", GOOD)
def test_test_kernels_compile_for_every_arch(name):
    code, exprs = source(name), names(name)
    timings = {}
    for arch in cc.nvrtc_archs():
        for method in ("cubin", "ptx"):
            t0 = time.perf_counter()
            out = cc.compile_source(code, exprs, arch=arch, method=method, include_dirs=[KERNELS], filename=name)
            timings[arch, method] = time.perf_counter() - t0
            if method == "ptx":
                assert b".target " + arch.encode() in out and b".entry" in out
            else:
                assert out[:4] == b"\x7fELF"
    print(f"\n{name}: " + ", ".join(f"{a}/{m} {t * 1e3:.0f} ms" for (a, m), t in timings.items()))


def test_planted_error_reports_file_and_line():
    code = '#include "cuda_compat.cuh"\n__global__ void k(float* x) {\n  x[0] = 1.f;\n  x[1] = undefined_name;\n}\n'
    with pytest.raises(cc.CompileError) as ei:
        cc.compile_source(code, ["k"], include_dirs=[KERNELS], filename="planted.cu")
    assert re.search(r"planted\.cu\(4\): error: identifier \"undefined_name\" is undefined", str(ei.value)), ei.value
    assert "planted.cu(4)" in ei.value.log
    with pytest.raises(cc.CompileError, match=r"INFINITY"):  # NVRTC has no INFINITY: kernels must not use it
        cc.compile_source("__global__ void k(float* x) { x[0] = INFINITY; }", ["k"])


def test_resource_usage_and_limits():
    usage = cc.resource_usage(source("reduce.cu"), names("reduce.cu"), "sm_80", include_dirs=[KERNELS])
    assert set(usage) == set(names("reduce.cu"))
    u = usage["block_sum<float, 128>"]
    assert 8 <= u["registers"] <= 255 and u["spill_stores"] == 0 and u["mangled"].startswith("_Z")
    assert usage["block_sum_static"]["shared_bytes"] == 32 * 8
    cc.check_limits(usage, max_registers=128, max_shared=48 * 1024)
    with pytest.raises(AssertionError, match=r"block_sum_static: 256 bytes shared memory > 100"):
        cc.check_limits(usage, max_shared=100)
    with pytest.raises(AssertionError, match=r"registers > 4"):
        cc.check_limits(usage, max_registers=4)
    spill = cc.resource_usage(source("spill.cu"), names("spill.cu"), "sm_80", include_dirs=[KERNELS])
    s = spill["spill_kernel"]
    assert s["registers"] <= 32 and s["spill_stores"] > 0 and s["spill_loads"] > 0
    with pytest.raises(AssertionError, match="spill_kernel: spills"):
        cc.check_limits(spill)
    cc.check_limits(spill, allow_spills=True)


def test_parse_ptxas_log():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 360 bytes cmem[0]
"""
    assert cc.parse_ptxas_log(log) == {"_Z1kPf": {"registers": 40, "spill_stores": 8, "spill_loads": 12,
                                                  "shared_bytes": 2048, "stack_bytes": 16}}


def test_developer_command():
    r = subprocess.run([sys.executable, "-m", "cutrans.compile_check", "--arch", "sm_90",
                        str(TEST_KERNELS / "reduce.cu"), str(TEST_KERNELS / "spill.cu")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(r"reduce\.cu sm_90 block_sum_static: \d+ regs, 0/0 B spill st/ld, 0 B stack, 256 B smem",
                     r.stdout), r.stdout
    assert re.search(r"spill\.cu sm_90 spill_kernel: \d+ regs, [1-9]\d*/[1-9]\d* B spill", r.stdout), r.stdout


def test_developer_command_on_the_package_kernels_and_a_file_without_names(tmp_path):
    """Without --name the package's sources compile the kernel loader's instantiations (one
    line each); a file naming no kernel fails instead of checking nothing."""
    from cutrans import _kernels
    kdir = Path(cc.__file__).resolve().parent.parent / "kernels"
    r = subprocess.run([sys.executable, "-m", "cutrans.compile_check", "--arch", "sm_90",
                        str(kdir / "lattice.cu")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^lattice\.cu sm_90 (.+): \d+ regs", r.stdout, re.M)
    assert sorted(listed) == sorted(_kernels.name_expressions("lattice.cu")), r.stdout
    plain = tmp_path / "plain.cu"
    plain.write_text("template <int N> __global__ void k(float* x) { x[0] = N; }\n")
    r = subprocess.run([sys.executable, "-m", "cutrans.compile_check", "--arch", "sm_90",
                        str(plain)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no kernel names" in r.stderr, (r.stdout, r.stderr)


def _elf_tables_end(image: bytes) -> int:
    import struct
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    return max(phoff + phnum * phentsize, shoff + shnum * shentsize)


def test_cubin_is_a_whole_elf_image():
    """CuPy's getCUBIN drops the image's last byte; compile_source gives the whole image
    (its ELF header tables end inside it), as nvdisasm needs."""
    image = cc.compile_source("__global__ void k(float* x) { x[threadIdx.x] = 1.f; }", ["k"],
                              arch="sm_90")
    assert image[:4] == b"\x7fELF"
    assert _elf_tables_end(image) <= len(image)
    short = image[:_elf_tables_end(image) - 1]
    assert cc.complete_cubin(short) == short + b"\0"
    assert cc.complete_cubin(b"not an ELF image") == b"not an ELF image"


def test_sass_stats_counts():
    ins = ["MOV R1, c[0x0][0x28]", "MUFU.EX2 R2, R2", "BAR.SYNC.DEFER_BLOCKING 0x0",
           "FADD R1, R1, R2", "MUFU.LG2 R3, R1", "BAR.SYNC.DEFER_BLOCKING 0x0", "EXIT"]
    assert cc.sass_stats(ins) == {"instructions": 7, "mufu": 2, "barriers": 2,
                                  "between_barriers": [2]}


WAVE = """
template <int N>
__global__ void wave(float* x) {
  for (int n = 0; n < 3; ++n) {
    x[threadIdx.x] = expf(x[threadIdx.x]);
    __syncthreads();
  }
}
"""

needs_nvdisasm = pytest.mark.skipif(cc.nvdisasm() is None,
                                    reason="nvdisasm (nvidia-cuda-nvdisasm) not installed")


@needs_nvdisasm
def test_sass_of_a_kernel_by_name_expression():
    kernels = cc.sass(WAVE, ["wave<4>"], "sm_90")
    ins = kernels["wave<4>"]
    assert any(i.startswith("EXIT") for i in ins)
    assert not any("/*" in i or i.endswith(";") for i in ins)  # bare instructions
    st = cc.sass_stats(ins)
    # the loop unrolled: three steps, each an exp (MUFU.EX2) and a barrier
    assert st["barriers"] == 3 and st["mufu"] == 3 and len(st["between_barriers"]) == 2
    assert all(0 < n < st["instructions"] for n in st["between_barriers"])


@needs_nvdisasm
def test_developer_command_sass():
    r = subprocess.run([sys.executable, "-m", "cutrans.compile_check", "--sass",
                        str(TEST_KERNELS / "reduce.cu")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(r"reduce\.cu sm_90 block_sum<float, 128>: \d+ SASS instructions, \d+ MUFU, "
                     r"1 barriers \(static\)", r.stdout), r.stdout


def test_default_files_are_the_packages_and_an_empty_folder_fails(monkeypatch, tmp_path,
                                                                  capsys):
    """Without files it reads the kernel loader's folder (not any folder named ``kernels``
    beside the package, e.g. the PyPI package of that name); none there is an error."""
    from cutrans import _kernels
    monkeypatch.setattr(_kernels, "kernels_dir", lambda: str(tmp_path))
    with pytest.raises(SystemExit) as e:
        cc.main(["--arch", "sm_90"])
    assert e.value.code == 2 and "no .cu files" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--arch", "90"], "--arch: expected a name like 'sm_90'"),
    (["--arch", "compute_90"], "--arch: expected a name like 'sm_90'"),
    (["--arch", "sm_91"], "--arch sm_91: this NVRTC supports"),
    (["missing.cu"], "missing.cu: no such file"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cc.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_disassembler_failure_is_reported(monkeypatch, tmp_path):
    """nvdisasm's own message (e.g. an architecture it no longer reads), not a traceback."""
    tool = tmp_path / "nvdisasm"
    tool.write_text("#!/bin/sh\necho 'CUDA architecture \"SM70\" is deprecated' >&2\nexit 1\n")
    tool.chmod(0o755)
    monkeypatch.setattr(cc, "nvdisasm", lambda: str(tool))
    with pytest.raises(RuntimeError, match='could not disassemble the sm_90 cubin .*SM70'):
        cc.sass(WAVE, ["wave<4>"], "sm_90")
