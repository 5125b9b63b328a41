"""No test module is skipped whole in a numpy-only environment (STYLE.md item 16).

A subprocess collects the suite with torch, JAX, CuPy, ml_dtypes, numba, warprnnt-numba and
matplotlib made unimportable (tests/numpy_only/sitecustomize.py on PYTHONPATH) and the
plugin tests/numpy_only/numpy_only_guard.py, which records per module what was collected,
what its skip/skipif marks skip, and whether collection skipped it (a module-level
``importorskip``). Every module outside FRAMEWORK_MODULES must keep a test that is not
skipped (collection only: ~2 s), and -- marked ``slow``, ~3 min on 2 cores -- the whole
suite but the sanitizer tests runs numpy-only with no failure and a passing test in every
such module. The same by hand:

    PYTHONPATH=tests/numpy_only python -m pytest -q -ra
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

#: modules that need an optional framework by their very subject (skipping them whole
#: without it is right); everything else must run numpy-only
FRAMEWORK_MODULES = {
    "tests/bench/test_baseline.py": "the torch + torchaudio batched baseline",
    "tests/core/test_cublas_route.py": "CuPy's cuBLAS bindings (stand-ins for the library)",
    "tests/emulation/test_compile_check.py": "NVRTC through CuPy",
    "tests/examples/test_examples.py": "the PyTorch and JAX training examples (per test)",
    "tests/gpu/test_gpu_cupy.py": "CuPy and a GPU",
    "tests/interop/test_gpu.py": "CUDA torch / JAX / CuPy (skips per test)",
    "tests/interop/test_jax.py": "JAX",
    "tests/interop/test_readme_examples.py": "the README's torch and JAX examples (per test)",
    "tests/interop/test_torch_compile.py": "torch",
    "tests/interop/test_torch_ddp.py": "torch.distributed",
    "tests/interop/test_torch_device_checks.py": "torch (per test)",
    "tests/interop/test_variants_interop.py": "the torch and JAX adapters' variants (per test)",
    "tests/interop/test_torch_fused.py": "torch",
    "tests/interop/test_torch_rnnt.py": "torch",
    "tests/kernels/test_kernel_compile.py": "NVRTC through CuPy",
}


def test_module_list_is_current():
    for path in FRAMEWORK_MODULES:
        assert os.path.exists(os.path.join(ROOT, path)), f"stale entry: {path}"


def guard_run(tmp_path, run: bool):
    report = tmp_path / "report.json"
    env = dict(os.environ, CUTRANS_NUMPY_ONLY_REPORT=str(report), CUTRANS_FUZZ="smoke",
               PYTHONPATH=os.pathsep.join(
                   [os.path.join(TESTS, "numpy_only")] +
                   [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "numpy_only_guard", "-p",
           "no:cacheprovider", "tests", f"--ignore={os.path.relpath(__file__, ROOT)}",
           *(["-m", "not sanitizer and not slow"] if run else ["--collect-only"])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert all(data["blocked"].values()), f"the blocker did not work: {data['blocked']}"
    return data, proc


def check_modules(data, proc, run: bool):
    modules = data["modules"]
    on_disk = sorted(os.path.relpath(os.path.join(d, f), ROOT)
                     for d, _, files in os.walk(TESTS) for f in files
                     if f.startswith("test_") and f.endswith(".py"))
    problems = []
    for path in on_disk:
        if path == os.path.relpath(__file__, ROOT):
            continue
        m = modules.get(path)
        if m is None:
            problems.append(f"{path}: not collected at all")
        elif m["collect"] == "failed":
            problems.append(f"{path}: collection error: {m['reason']}")
        elif m["failed"]:
            problems.append(f"{path}: failures numpy-only: {m['failed']}")
        elif path in FRAMEWORK_MODULES or (run and m["items"] == 0):
            continue  # by subject; or deselected (-m) in the run
        elif m["collect"] == "skipped" and "hypothesis" in m["reason"] and \
                importlib.util.find_spec("hypothesis") is None:
            continue  # a test tool missing here too, not an optional framework
        elif m["collect"] == "skipped":
            problems.append(f"{path}: skipped whole at collection ({m['reason']}); skip the "
                            f"tests that need the framework one by one")
        elif m["items"] - m["mark_skipped"] < 1:
            problems.append(f"{path}: every test is skipped by its marks")
        elif run and m["passed"] < 1:
            problems.append(f"{path}: no test passed numpy-only; skips: {m['skipped'][:3]}")
    assert not problems, "\n".join(problems) + "\n" + proc.stdout[-2000:]
    if run:
        assert data["exitstatus"] == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_no_module_skipped_whole_without_frameworks(tmp_path):
    check_modules(*guard_run(tmp_path, run=False), run=False)


@pytest.mark.slow
def test_whole_suite_passes_numpy_only(tmp_path):
    """Every test but the sanitizer ones, numpy-only: no failure, no error."""
    check_modules(*guard_run(tmp_path, run=True), run=True)
