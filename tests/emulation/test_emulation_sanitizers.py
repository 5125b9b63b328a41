"""Planted bugs caught by ThreadSanitizer / AddressSanitizer (child processes with the runtime
preloaded via cutrans.emulation.sanitizer_env), and no false reports on correct kernels."""
from __future__ import annotations

import subprocess
import sys

import pytest

from emu_support import KERNELS, TEST_KERNELS
from cutrans.emulation import EmulatedModule, EmulationError
from emu_health import sanitizer_env_or_skip

pytestmark = pytest.mark.sanitizer

CHILD = r"""
import sys
import numpy as np
from cutrans.emulation import EmulatedModule, EmulationError
from cutrans.compile_check import names_in_source
kernels, test_kernels, sanitizer, mode, job = sys.argv[1:]

def module(name):
    code = open(f"{test_kernels}/{name}").read()
    return EmulatedModule(code, names_in_source(code), include_dirs=[kernels], mode=mode, sanitizer=sanitizer,
                          filename=name)

if job == "race":
    x = np.arange(64, dtype=np.float32); y = np.zeros(64, np.float32)
    module("bugs.cu").get_function("racy_shift")(1, 64, (x, y, np.int32(64)))
elif job == "oob":
    x = np.ones(1000, np.float32); y = np.zeros(1000, np.float32)  # > 1 KiB: plain malloc, redzones
    module("bugs.cu").get_function("oob_read")(8, 128, (x, y, np.int32(1000)))
elif job == "clean":
    x = np.random.default_rng(0).random((3, 300)).astype(np.float32); out = np.zeros(3, np.float32)
    module("reduce.cu").get_function("block_sum<float, 128>")(3, 128, (x, out, np.int32(300)), shared_mem=16)
    assert np.allclose(out, x.sum(1), rtol=1e-5)
    blank = np.full((1, 9, 6), -0.5); emit = np.full((1, 9, 5), -1.0); alpha = np.zeros((1, 9, 6))
    module("wavefront.cu").get_function("alpha_wavefront<double>")(1, 32, (blank, emit, alpha, np.int32(9),
                                                                            np.int32(5)))
    assert np.isfinite(alpha).all()
    try:
        module("bugs.cu").get_function("divergent_deadlock")(1, 64, (np.zeros(64, np.float32),))
        raise SystemExit("no deadlock reported")
    except EmulationError as e:
        assert "deadlock" in str(e)
print("CHILD-DONE", flush=True)
"""


def run_child(sanitizer: str, mode: str, job: str) -> str:
    r = subprocess.run([sys.executable, "-c", CHILD, str(KERNELS), str(TEST_KERNELS), sanitizer, mode, job],
                       env=sanitizer_env_or_skip(sanitizer), capture_output=True, text=True, timeout=120)
    return f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"


def line_of(marker: str) -> int:
    lines = (TEST_KERNELS / "bugs.cu").read_text().splitlines()
    return next(i for i, ln in enumerate(lines, 1) if marker in ln)


def test_tsan_catches_shared_memory_race():
    out = run_child("thread", "thread", "race")
    assert "WARNING: ThreadSanitizer: data race" in out, out
    assert "racy_shift(float const*, float*, int)" in out, out
    # both sides of the race: the write of s[i] and the unsynchronised read of a neighbour's s[]
    assert f"bugs.cu:{line_of('s[i] = x[i]')}" in out and f"bugs.cu:{line_of('RACE')}" in out, out


@pytest.mark.parametrize("mode", ["thread", "fiber"])
def test_asan_catches_out_of_bounds(mode):
    out = run_child("address", mode, "oob")
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in out, out
    assert f"oob_read(float const*, float*, int) " in out and f"bugs.cu:{line_of('OOB')}" in out, out


@pytest.mark.parametrize("sanitizer,mode", [("thread", "thread"), ("address", "fiber"), ("address", "thread")])
def test_sanitizers_quiet_on_correct_kernels(sanitizer, mode):
    out = run_child(sanitizer, mode, "clean")
    assert "CHILD-DONE" in out and "rc=0" in out, out
    assert "ThreadSanitizer" not in out and "ERROR: AddressSanitizer" not in out, out


def test_sanitized_module_needs_preloaded_runtime():
    with pytest.raises(EmulationError, match="LD_PRELOAD"):
        EmulatedModule("__global__ void k() {}", ["k"], sanitizer="address")
