"""The capture-safe GEMM route (``cutrans.backends._cublas_ctypes``) on the CPU: a stand-in
libcublas compiled from tests/core/fake_cublas.cpp (host memory as "device" memory, a
reference column-major GEMM that checks its arguments as cuBLAS documents them) receives
the very ctypes calls the route makes on a GPU. Checked here: argument order and types, the
row-major -> column-major mapping for every operand layout, accumulate, dtypes, the stream
of each call, one handle per device, library discovery, and the CuPy route's switch to it
when CuPy refuses a call during stream capture. That cuBLAS really captures is a GPU test
(tests/interop/test_torch_device_checks.py)."""
import ctypes
import subprocess
import types

import numpy as np
import pytest

from cutrans.backends import _cublas, _cublas_ctypes
from cutrans.emulation import _build
from optional_deps import needs
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_cublas.cpp")


@pytest.fixture(scope="module")
def fake_path(tmp_path_factory):
    lib = tmp_path_factory.mktemp("fake_cublas") / "libcublas.so.99"
    r = subprocess.run([*_build.compiler_argv(), "-O1", "-fPIC", "-shared", str(SOURCE), "-o",
                        str(lib)], capture_output=True, text=True, env=_build.compiler_env())
    assert r.returncode == 0, r.stderr
    return str(lib)


@pytest.fixture
def fake(fake_path):
    """A fresh ``CublasLibrary`` on the stand-in and the stand-in's own probes."""
    probes = ctypes.CDLL(fake_path)
    probes.fake_last_stream.restype = ctypes.c_void_p
    return _cublas_ctypes.CublasLibrary(fake_path), probes


def _operand(rng, shape, layout, dtype):
    """A (rows, cols) operand: row-major, row-major with a padded leading dimension, or the
    transposed view of a row-major array."""
    rows, cols = shape
    if layout == "rows":
        return rng.standard_normal(shape).astype(dtype)
    if layout == "padded":
        return rng.standard_normal((rows, cols + 3)).astype(dtype)[:, :cols]
    return rng.standard_normal((cols, rows)).astype(dtype).T


LAYOUTS = ["rows", "padded", "transposed"]


@pytest.mark.parametrize("la", LAYOUTS)
@pytest.mark.parametrize("lb", LAYOUTS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_matches_numpy_for_every_layout(fake, la, lb, accumulate):
    lib, probes = fake
    rng = np.random.default_rng(7)
    m, k, n = 5, 4, 6
    a, b = _operand(rng, (m, k), la, np.float32), _operand(rng, (k, n), lb, np.float32)
    base = rng.standard_normal((m, n + 2)).astype(np.float32)
    out = base.copy()[:, :n]  # row-major with a leading dimension
    expect = a.astype(np.float64) @ b + (base[:, :n] if accumulate else 0)
    lib.prepare(0)
    lib.gemm_ex(0, 0x5000, _cublas.gemm_ex_args(a, b, out, accumulate=accumulate))
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    assert probes.fake_last_stream() == 0x5000


@pytest.mark.parametrize("dtype, out_dtype, compute", [
    ("float64", "float64", 70), ("float32", "float32", 68),
    pytest.param("bfloat16", "float32", 68, marks=needs("ml_dtypes"))])
def test_gemm_dtypes_and_compute_types(fake, dtype, out_dtype, compute):
    lib, probes = fake
    if dtype == "bfloat16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 3)).astype(dtype)
    b = rng.standard_normal((5, 3)).astype(dtype).T  # the dW / logits GEMMs' w.T
    out = np.zeros((7, 5), dtype=out_dtype)
    lib.prepare(0)
    lib.gemm_ex(0, 1, _cublas.gemm_ex_args(a, b, out))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, exact, rtol=1e-6 if out_dtype == "float32" else 1e-12,
                               atol=1e-6 if out_dtype == "float32" else 1e-12)
    assert probes.fake_last_compute() == compute
    assert probes.fake_last_algo() == -1  # CUBLAS_GEMM_DEFAULT
    assert probes.fake_last_math_mode() == 0  # CUBLAS_DEFAULT_MATH: never TF32 by mode


def test_tf32_is_asked_for_by_the_compute_type(fake):
    lib, probes = fake
    a, b, out = np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), np.zeros((2, 2),
                                                                                  np.float32)
    lib.prepare(0)
    lib.gemm_ex(0, 1, _cublas.gemm_ex_args(a, b, out, tf32=True))
    assert probes.fake_last_compute() == 77  # CUBLAS_COMPUTE_32F_FAST_TF32
    np.testing.assert_array_equal(out, np.full((2, 2), 3.0))


def test_empty_inner_dimension_and_empty_output(fake):
    lib, _ = fake
    a, b = np.zeros((3, 0), np.float32), np.zeros((0, 2), np.float32)
    out = np.full((3, 2), 5.0, np.float32)
    lib.prepare(0)
    lib.gemm_ex(0, 1, _cublas.gemm_ex_args(a, b, out, accumulate=True))
    np.testing.assert_array_equal(out, 5.0)  # beta = 1: unchanged
    lib.gemm_ex(0, 1, _cublas.gemm_ex_args(a, b, out))
    np.testing.assert_array_equal(out, 0.0)  # beta = 0: zeroed
    assert _cublas.gemm_ex_args(np.zeros((0, 4)), np.zeros((4, 2)), np.zeros((0, 2))) is None


def test_bad_operands_are_value_errors():
    with pytest.raises(ValueError, match="out must be row-major"):
        _cublas.gemm_ex_args(np.ones((2, 3)), np.ones((3, 4)), np.ones((4, 2)).T)
    with pytest.raises(ValueError, match="neither row-major nor a transposed"):
        _cublas.gemm_ex_args(np.ones((4, 6))[::2, ::2], np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) @ \(4, 4\)"):
        _cublas.gemm_ex_args(np.ones((2, 3)), np.ones((4, 4)), np.ones((2, 4)))


def test_one_handle_per_device_made_once(fake):
    lib, probes = fake
    before = probes.fake_handles()
    lib.prepare(0)
    lib.prepare(0)
    assert probes.fake_handles() == before + 1 and lib.has_handle(0) and not lib.has_handle(1)
    lib.prepare(1)
    assert probes.fake_handles() == before + 2 and lib.has_handle(1)


def test_a_failing_call_raises_with_the_status(fake):
    lib, _ = fake
    lib.prepare(0)
    args = _cublas.gemm_ex_args(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                                np.ones((2, 2), np.float32))
    bad = _cublas.GemmExArgs(**{**vars(args), "ldc": 1})  # ldc < m
    with pytest.raises(_cublas_ctypes.CublasError, match="cublasGemmEx returned cuBLAS status 7"):
        lib.gemm_ex(0, 1, bad)


def test_loaded_cublas_from_the_process_maps():
    maps = "\n".join([
        "7f00-7f10 r-xp 00000000 08:01 11 /usr/lib/libcublasLt.so.13.0.1",
        "7f10-7f20 r-xp 00000000 08:01 12 /opt/torch/nvidia/cublas/lib/libcublas.so.12",
        "7f20-7f30 r--p 00001000 08:01 12 /opt/torch/nvidia/cublas/lib/libcublas.so.12",
        "7f30-7f40 r-xp 00000000 08:01 13 /opt/cupy/libcublas.so.13.1.0.3",
        "7f40-7f50 rw-p 00000000 00:00 0 ",
        "7f50-7f60 r-xp 00000000 08:01 14 /usr/lib/libfoo_libcublas.so.13.txt"])
    assert _cublas_ctypes.loaded_cublas(maps) == [
        "/opt/torch/nvidia/cublas/lib/libcublas.so.12", "/opt/cupy/libcublas.so.13.1.0.3"]
    assert _cublas_ctypes.loaded_cublas(maps, 13)[0] == "/opt/cupy/libcublas.so.13.1.0.3"
    assert _cublas_ctypes.candidates(13)[-2:] == ["libcublas.so.13", "libcublas.so"]


@pytest.fixture
def fresh_library(monkeypatch):
    monkeypatch.setattr(_cublas_ctypes, "_LIBRARY", None)
    monkeypatch.setattr(_cublas_ctypes, "_LIBRARY_ERROR", None)


def test_library_named_by_the_environment(fake_path, monkeypatch, fresh_library):
    monkeypatch.setenv("CUTRANS_CUBLAS_LIBRARY", fake_path)
    lib = _cublas_ctypes.library(13)
    assert lib.path == fake_path and _cublas_ctypes.library(13) is lib


def test_missing_library_says_what_was_tried(tmp_path, monkeypatch, fresh_library):
    monkeypatch.setenv("CUTRANS_CUBLAS_LIBRARY", str(tmp_path / "libcublas.so.0"))
    for _ in range(2):  # the failure is kept, not retried per GEMM
        with pytest.raises(_cublas_ctypes.CublasError, match=r"no usable cuBLAS library \(.*"
                           r"libcublas\.so\.0"):
            _cublas_ctypes.library(13)


def test_a_library_without_the_functions_is_refused(tmp_path):
    empty = tmp_path / "libempty.so"
    src = tmp_path / "empty.cpp"
    src.write_text("extern \"C\" int nothing() { return 0; }\n")
    subprocess.run([*_build.compiler_argv(), "-fPIC", "-shared", str(src), "-o", str(empty)],
                   check=True, env=_build.compiler_env())
    with pytest.raises(_cublas_ctypes.CublasError, match="has no cublasCreate_v2 / cublasCreate"):
        _cublas_ctypes.CublasLibrary(str(empty))


# --------------------------------------------- the CuPy route's switch during capture
def _capturing_cupy(monkeypatch, stream=0x7000, device=0):
    """Stand-ins for CuPy's cuBLAS (refusing as during capture), device and stream."""
    import cupy
    import cupy_backends.cuda.libs as libs
    from cupy.cuda import device as cupy_device

    calls = []

    def refuse(*args):
        raise NotImplementedError("calling cuBLAS API during stream capture is currently "
                                  "unsupported")
    fake = types.SimpleNamespace(
        getPointerMode=lambda h: 7, getMathMode=lambda h: 9, gemmEx=refuse,
        setPointerMode=lambda h, m: calls.append(("setPointerMode", m)),
        setMathMode=lambda h, m: calls.append(("setMathMode", m)))
    monkeypatch.setitem(vars(libs), "cublas", fake)
    monkeypatch.setattr(cupy_device, "get_cublas_handle",
                        lambda: calls.append(("get_cublas_handle",)) or 1234, raising=False)
    monkeypatch.setattr(cupy.cuda, "Device", lambda *a: types.SimpleNamespace(id=device))
    monkeypatch.setattr(cupy.cuda, "get_current_stream",
                        lambda *a: types.SimpleNamespace(ptr=stream))
    monkeypatch.setattr(_cublas, "_cuda_major", lambda: 13)
    return calls


@needs("cupy")
def test_refused_gemm_runs_through_ctypes_on_the_capturing_stream(fake, monkeypatch):
    lib, probes = fake
    calls = _capturing_cupy(monkeypatch, stream=0x7000)
    monkeypatch.setattr(_cublas_ctypes, "library",
                        lambda major: calls.append(("library", major)) or lib)
    monkeypatch.setattr("cupy.cuda.runtime.streamIsCapturing", lambda s: False)
    _cublas.prepare_capture()  # the warm-up call, outside the capture
    assert lib.has_handle(0)
    # CuPy's cuBLAS is loaded before the library search (so the search finds that copy)
    assert calls == [("get_cublas_handle",), ("library", 13)]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(
        np.float32)
    out = np.zeros((4, 2), np.float32)
    _cublas.gemm(a, b, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-6, atol=1e-6)
    assert probes.fake_last_stream() == 0x7000
    modes = [c for c in calls if c[0].startswith("set")]
    assert modes[-2:] == [("setMathMode", 9), ("setPointerMode", 7)]  # CuPy's modes restored


@needs("cupy")
def test_no_handle_is_made_during_a_capture_and_the_capture_says_so(fake, monkeypatch):
    lib, probes = fake
    _capturing_cupy(monkeypatch, device=5)
    monkeypatch.setattr(_cublas_ctypes, "library", lambda major: lib)
    monkeypatch.setattr("cupy.cuda.runtime.streamIsCapturing", lambda s: True)
    before = probes.fake_handles()
    _cublas.prepare_capture()  # first call ever inside a capture: no cublasCreate
    assert probes.fake_handles() == before and not lib.has_handle(5)
    with pytest.raises(RuntimeError, match="make one call with checks='device' outside the "
                       "capture first") as info:
        _cublas.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                     np.ones((2, 2), np.float32))
    assert str(info.value) == _cublas.CAPTURE_NOT_PREPARED
    assert isinstance(info.value.__cause__, NotImplementedError)


@needs("cupy")
def test_capture_without_a_usable_cublas_says_why(monkeypatch, tmp_path, fresh_library):
    _capturing_cupy(monkeypatch)
    monkeypatch.setenv("CUTRANS_CUBLAS_LIBRARY", str(tmp_path / "missing.so"))
    monkeypatch.setattr("cupy.cuda.runtime.streamIsCapturing", lambda s: False)
    _cublas.prepare_capture()  # the failure is kept for the capture to report
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph here.*missing"):
        _cublas.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                     np.ones((2, 2), np.float32))
