"""The kernels under AddressSanitizer (fibers) and ThreadSanitizer (one thread per CUDA thread)
of the CPU emulation, in a subprocess with the sanitizer runtime preloaded."""
import os
import shutil
import subprocess
import sys

import pytest

from emu_health import sanitizer_env_or_skip

HERE = os.path.dirname(__file__)


@pytest.mark.sanitizer
@pytest.mark.parametrize("sanitizer", ["address", "thread"])
def test_kernels_under_sanitizer(sanitizer):
    if not shutil.which("g++"):
        pytest.skip("g++ not found")
    env = sanitizer_env_or_skip(sanitizer)
    env["TSAN_OPTIONS"] = "halt_on_error=1 report_signal_unsafe=0"
    r = subprocess.run([sys.executable, os.path.join(HERE, "smoke_run.py"), sanitizer],
                       capture_output=True, text=True, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "smoke run OK" in out, out[-6000:]
    assert "ERROR: AddressSanitizer" not in out and "WARNING: ThreadSanitizer" not in out, \
        out[-6000:]
