"""Crash isolation of the emulated tests: a pytest plugin (``pytest_plugins`` of tests/conftest.py).

The CPU emulation runs kernels inside the pytest process through ctypes, so a toolchain problem
that makes a launch crash (SIGSEGV, ...) would kill pytest without naming a test. Therefore the
first time a test loads an emulated module in-process (``EmulatedModule.__init__``), a child
process builds the library modules and launches every kernel once (``CHILD``:
tests/kernels/smoke_run.py). If the child dies by a signal or hangs, that test and every later
one that loads an emulated module fail with a message naming the test, the signal and the
toolchain, and pytest keeps going. A child that exits with an error status does not gate: the
tests report that error themselves. Cost: one child per session (< 1 s with a warm module cache).
``-p no:emu_health`` turns the check off (e.g. to reproduce a crash in the pytest process).
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

import pytest

CHILD = [sys.executable, "-X", "faulthandler", os.path.join(os.path.dirname(__file__), "kernels", "smoke_run.py"),
         "none"]
TIMEOUT_S = 600  # a cold module cache builds the three library modules (~10 s on 2 busy cores)
_verdict: list[str] = []  # [] not checked yet; [""] healthy; [reason] broken


def _run_child() -> str:
    """'' if the child finished (whatever its status), else why it did not."""
    try:
        r = subprocess.run(CHILD, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out, why = (e.stderr or b""), f"hung (killed after {TIMEOUT_S} s)"
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
    else:
        if r.returncode >= 0:
            return ""
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        out, why = r.stderr, f"died by {name}"
    from cutrans.emulation import toolchain_description
    tail = "\n".join(out.strip().splitlines()[-15:])
    cmd = " ".join(CHILD[1:]).replace("\n", " ")
    return (f"the emulation health check (a child process that launches every library kernel once: "
            f"{cmd[:100] + '...' if len(cmd) > 100 else cmd}) {why}; toolchain: {toolchain_description()}.\n"
            f"Last lines of its stderr:\n{tail}")


def require_healthy() -> None:
    """Fail the current test (naming it) if emulated launches crash this toolchain."""
    if not _verdict:
        _verdict.append(_run_child())
    if _verdict[0]:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
        pytest.fail(f"{test}: emulated module not loaded in the pytest process: {_verdict[0]}", pytrace=False)


def pytest_configure(config):
    from cutrans.emulation import launcher
    init = launcher.EmulatedModule.__init__

    @functools.wraps(init)
    def guarded(self, *args, **kwargs):
        require_healthy()
        init(self, *args, **kwargs)

    launcher.EmulatedModule.__init__ = guarded
    config.add_cleanup(lambda: setattr(launcher.EmulatedModule, "__init__", init))


def sanitizer_env_or_skip(sanitizer: str, env: dict | None = None) -> dict:
    """``cutrans.emulation.sanitizer_env``, or a skip saying why this toolchain cannot run it
    (e.g. it links libstdc++ statically, so there is no libstdc++.so to preload)."""
    from cutrans.emulation import EmulationError, sanitizer_env
    try:
        return sanitizer_env(sanitizer, env)
    except EmulationError as e:
        pytest.skip(f"sanitizer={sanitizer!r} unavailable with this toolchain: {e}")
