"""Toolchains that used to crash the emulator, and crash isolation of the emulated tests.

* ``$CXX`` linking libstdc++ statically (a relocated g++ whose libstdc++.so is not found, here a
  wrapper adding ``-static-libstdc++``): its thread-local and .bss statics must not be taken
  for ``__shared__`` storage; the kernels run and match NumPy, a ToolchainWarning says so and
  ``sanitizer_env`` refuses clearly. Runs in a child (``compiler()`` is read once per process)
  with its own module cache, kept between sessions.
* an emulated launch that kills the session's health-check child fails the tests that load
  emulated modules (naming each, the signal and the toolchain) instead of killing pytest.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cutrans.emulation import EmulationError, _build, cache_dir, sanitizer_env
from cutrans.emulation._build import compiler

TESTS = Path(__file__).resolve().parents[1]

STATIC_CHILD = r"""
import warnings
import smoke_run
from emu_support import module, check_poison_kinds

with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    assert smoke_run.main(None) == 0  # every library kernel once, compared with NumPy
    kinds = module("shared_kinds.cu")
    check_poison_kinds(kinds)
from cutrans import _kernels
from cutrans.emulation import EmulationError, ToolchainWarning, sanitizer_env
from emu_support import assert_ranges_writable, library_owners
assert any(w.category is ToolchainWarning and "links libstdc++ statically" in str(w.message) for w in seen), \
    [str(w.message) for w in seen]
provider = _kernels.EmulatedProvider()
for src in _kernels.sources():
    assert_ranges_writable(provider._build(src), library_owners())
assert_ranges_writable(kinds, ("poison_kinds", "template_helper"))
try:
    sanitizer_env("address")
    raise SystemExit("sanitizer_env accepted a static libstdc++")
except EmulationError as e:
    assert "libstdc++.so preloaded" in str(e) and "statically" in str(e), e
print("STATIC-OK")
"""


def _describe(r: subprocess.CompletedProcess) -> str:
    status = f"killed by {signal.Signals(-r.returncode).name}" if r.returncode < 0 else f"exit {r.returncode}"
    return f"{status}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-6000:]}"


def test_static_libstdcxx_toolchain():
    cxx = shlex.join(_build.compiler_argv())  # $CXX may carry arguments
    root = cache_dir() / f"static-libstdcxx-{hashlib.sha256(cxx.encode()).hexdigest()[:12]}"
    root.mkdir(exist_ok=True)
    wrapper = root / "g++"
    text = f'#!/bin/sh\nexec {cxx} "$@" -static-libstdc++\n'
    if not wrapper.exists() or wrapper.read_text() != text:
        tmp = root / f".g++.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, wrapper)
    env = dict(os.environ, CXX=str(wrapper), CUTRANS_EMU_CACHE=str(root),
               PYTHONPATH=os.pathsep.join([str(TESTS / "emulation"), str(TESTS / "kernels")]))
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", STATIC_CHILD], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "STATIC-OK" in r.stdout, _describe(r)


CRASHING_CHILD = r"""
import numpy as np
from cutrans.emulation import EmulatedModule
m = EmulatedModule("__global__ void null_write(int* const* p) { *p[threadIdx.x] = 1; }", ["null_write"])
m.get_function("null_write")(1, 32, (np.zeros(32, np.int64),))  # 32 null pointers
"""

SUB_SESSION_TESTS = """
import numpy as np
import cutrans
from cutrans.emulation import EmulatedModule

ARGS = (np.zeros((1, 2, 2, 3)), np.array([[1]]), np.array([2]), np.array([1]))

def test_first_emulated():
    cutrans.rnnt_loss(*ARGS, backend="emulated")

def test_numpy_still_runs():
    assert abs(float(cutrans.rnnt_loss(*ARGS, backend="numpy")) + np.log(2 / 27)) < 1e-12

def test_second_emulated():
    EmulatedModule("__global__ void k() {}", ["k"])
"""


def test_crashing_emulation_fails_the_tests_not_pytest(tmp_path):
    """The health-check child segfaults in an emulated launch: pytest survives and names the tests."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import sys
        pytest_plugins = ["emu_health"]

        def pytest_configure(config):
            import emu_health
            emu_health.CHILD = [sys.executable, "-X", "faulthandler", "-c", {CRASHING_CHILD!r}]
    """))
    (tmp_path / "test_sub.py").write_text(SUB_SESSION_TESTS)
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = _describe(r)
    assert r.returncode == 1 and "2 failed, 1 passed" in r.stdout, out
    for test in ("test_first_emulated", "test_second_emulated"):
        assert f"test_sub.py::{test}: emulated module not loaded in the pytest process: the emulation " \
               f"health check" in r.stdout, out
    assert "died by SIGSEGV; toolchain: CXX=" in r.stdout and " links libstdc++ " in r.stdout, out
    assert "PytestAssertRewriteWarning" not in r.stdout, out
    assert "Fatal Python error: Segmentation fault" in r.stdout, out  # the child's stderr, quoted


def test_libstdcxx_linkage_probe_agrees_with_the_modules(emu):
    from cutrans.emulation._elf import Elf
    static = _build.libstdcxx_linkage() == "static"
    assert _build.links_libstdcxx_statically(Elf(emu("reduce.cu").path)) == static
    assert ("statically (libstdc++.a)" if static else "dynamically") in _build.toolchain_description()


def test_sanitizer_env_names_what_the_toolchain_lacks(tmp_path, monkeypatch):
    fake = tmp_path / "g++"
    fake.write_text('#!/bin/sh\necho "${1#-print-file-name=}"\n')  # finds nothing: echoes the bare name
    fake.chmod(0o755)
    monkeypatch.setattr(_build, "compiler", lambda: (str(fake), "fake 1.0"))
    monkeypatch.setattr(_build, "libstdcxx_linkage", lambda: "static")
    with pytest.raises(EmulationError, match=r"sanitizer runs need libstdc\+\+\.so preloaded with the sanitizer "
                                             r"runtime, but CXX=.*g\+\+ \(fake 1\.0\) links libstdc\+\+ statically"):
        sanitizer_env("address")
    monkeypatch.setattr(_build, "libstdcxx_linkage", lambda: "dynamic")
    with pytest.raises(EmulationError, match=r"sanitizer='thread' needs libtsan\.so, which `.*g\+\+ "
                                             r"-print-file-name=libtsan\.so` does not find \(got 'libtsan\.so'\)"):
        sanitizer_env("thread")


def test_the_compiler_runs_without_the_preloaded_sanitizer(monkeypatch):
    """A sanitizer child builds its modules with g++: not under the runtime it preloads
    (cc1plus under a preloaded ThreadSanitizer runtime builds many times slower), keeping
    whatever else the user preloads."""
    tsan, cxxlib, user = "/x/libtsan.so", "/x/libstdc++.so", "/user/libmine.so"
    monkeypatch.setenv("LD_PRELOAD", user)
    try:
        env = sanitizer_env("thread")
    except EmulationError as e:
        pytest.skip(f"no ThreadSanitizer with this toolchain: {e}")
    ours = env[_build._PRELOADED].split()
    assert len(ours) == 2 and env["LD_PRELOAD"].split() == ours + [user]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _build.compiler_env()["LD_PRELOAD"] == user
    assert _build._PRELOADED not in _build.compiler_env()
    monkeypatch.setenv("LD_PRELOAD", f"{tsan} {cxxlib}")
    monkeypatch.setenv(_build._PRELOADED, f"{tsan} {cxxlib}")
    assert "LD_PRELOAD" not in _build.compiler_env()
    monkeypatch.delenv(_build._PRELOADED)  # preloaded by the user, not by cutrans: kept
    assert _build.compiler_env()["LD_PRELOAD"] == f"{tsan} {cxxlib}"


@pytest.fixture
def cxx_env():
    """Set ``$CXX`` for one test: ``compiler()`` and the linkage probe are read again, and
    again after the test (with the original value)."""
    old = os.environ.get("CXX")

    def use(value):
        os.environ["CXX"] = value
        compiler.cache_clear()
        _build.libstdcxx_linkage.cache_clear()
    yield use
    if old is None:
        os.environ.pop("CXX", None)
    else:
        os.environ["CXX"] = old
    compiler.cache_clear()
    _build.libstdcxx_linkage.cache_clear()


@pytest.mark.parametrize("cxx, message", [
    ("/nonexistent/g++", "does not run"),
    ("/tmp", "does not run"),
    ("false", "--version failed (exit 1)"),
])
def test_a_compiler_that_does_not_run_is_a_build_error(cxx_env, cxx, message):
    from cutrans.emulation import BuildError
    cxx_env(cxx)
    with pytest.raises(BuildError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compiler()


def test_a_c_driver_is_refused_at_the_link_not_at_load(cxx_env):
    """gcc compiles C++ but links no C++ runtime: the probe's link fails with a message (it
    used to be reported as 'links libstdc++ statically', then an undefined-symbol OSError)."""
    import shutil
    from cutrans.emulation import BuildError
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    cxx_env("gcc")
    with pytest.raises(BuildError, match="cannot link a C\\+\\+ shared library"):
        _build.libstdcxx_linkage()


def test_a_compiler_with_arguments(cxx_env, tmp_path, monkeypatch):
    """``CXX="env g++"`` (as ``ccache g++``): split like a shell command."""
    import shutil
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    cxx_env(f"env {cxx}")
    assert _build.compiler_argv() == ["env", cxx]
    monkeypatch.setenv("CUTRANS_EMU_CACHE", str(tmp_path))
    built = _build.build("__global__ void k(float* x) { x[threadIdx.x] = 1.f; }", ["k"])
    assert built.compiled and Path(built.path).is_file()


def test_cache_folder_paths(monkeypatch, tmp_path):
    from cutrans.emulation import BuildError
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUTRANS_EMU_CACHE", "rel")
    assert cache_dir() == tmp_path / "rel"  # absolute: g++ runs in another folder
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUTRANS_EMU_CACHE", "~/emu")
    assert cache_dir() == tmp_path / "home" / "emu"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CUTRANS_EMU_CACHE", str(tmp_path / "file" / "emu"))
    with pytest.raises(BuildError, match="CUTRANS_EMU_CACHE to a writable folder"):
        cache_dir()
    # no $HOME and no passwd entry (containers): pathlib raises RuntimeError
    def no_home(self):
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.delenv("CUTRANS_EMU_CACHE")
    monkeypatch.setattr(Path, "expanduser", no_home)
    with pytest.raises(BuildError, match="the default is ~/.cache/cutrans/emu"):
        cache_dir()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "15"])
def test_bad_stack_size_is_an_error_naming_the_variable(monkeypatch, value):
    from cutrans.emulation.launcher import stack_kb
    monkeypatch.setenv("CUTRANS_EMU_STACK_KB", value)
    with pytest.raises(EmulationError, match="CUTRANS_EMU_STACK_KB: expected an integer >= 16"):
        stack_kb(None)
    monkeypatch.delenv("CUTRANS_EMU_STACK_KB")
    assert (stack_kb(None), stack_kb("address")) == (64, 256)


def test_a_truncated_cached_module_is_rebuilt(monkeypatch, tmp_path):
    """A cached module whose size is not the recorded one (a truncated copy) is rebuilt, not
    loaded (loading it crashed the process with SIGBUS)."""
    monkeypatch.setenv("CUTRANS_EMU_CACHE", str(tmp_path))
    code = "__global__ void k(float* x) { x[threadIdx.x] = 2.f; }"
    first = _build.build(code, ["k"])
    again = _build.build(code, ["k"])
    assert first.compiled and not again.compiled and again.path == first.path
    data = Path(first.path).read_bytes()
    Path(first.path).write_bytes(data[: len(data) // 2])
    rebuilt = _build.build(code, ["k"])
    assert rebuilt.compiled and Path(rebuilt.path).stat().st_size > len(data) // 2
