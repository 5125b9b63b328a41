"""The CuPy backend's GEMM route (``cutrans.backends._cublas``) on the CPU: the cuBLAS
wrapper and the handle are stand-ins that record the calls (no GPU needed). Its switch to
the ctypes route during stream capture: tests/core/test_cublas_ctypes.py."""
import types

import numpy as np
import pytest

from optional_deps import needs

pytestmark = needs("cupy")


class _DeviceArray:
    """What ``gemm`` reads of a CuPy array: shape, strides, itemsize, dtype, data.ptr."""

    def __init__(self, shape, dtype=np.float32, ptr=0):
        a = np.empty(shape, dtype=dtype)
        self.shape, self.strides, self.itemsize, self.dtype = a.shape, a.strides, a.itemsize, \
            a.dtype
        self.data = types.SimpleNamespace(ptr=ptr)


def _fake_cublas(monkeypatch, error=None):
    calls = []

    def gemm_ex(*args):
        calls.append(("gemmEx", args))
        if error is not None:
            raise error
    fake = types.SimpleNamespace(
        getPointerMode=lambda h: 7, getMathMode=lambda h: 9,
        setPointerMode=lambda h, m: calls.append(("setPointerMode", m)),
        setMathMode=lambda h, m: calls.append(("setMathMode", m)), gemmEx=gemm_ex)
    import cupy_backends.cuda.libs as libs
    from cupy.cuda import device
    monkeypatch.setitem(vars(libs), "cublas", fake)  # (getattr would load libcublas)
    monkeypatch.setattr(device, "get_cublas_handle", lambda: 1234, raising=False)
    return calls


def test_gemm_is_one_gemm_ex_call_with_the_modes_restored(monkeypatch):
    from cutrans.backends._cublas import gemm
    calls = _fake_cublas(monkeypatch)
    a, b, out = _DeviceArray((5, 3), ptr=1), _DeviceArray((3, 4), ptr=2), _DeviceArray((5, 4),
                                                                                      ptr=3)
    gemm(a, b, out, accumulate=True)
    names = [c[0] for c in calls]
    assert names == ["setPointerMode", "setMathMode", "gemmEx", "setMathMode",
                     "setPointerMode"]
    assert calls[3][1] == 9 and calls[4][1] == 7  # the caller's modes come back
    args = calls[2][1]
    # column-major out^T = b^T a^T: (n, m, k) = (4, 5, 3), b's pointer first, then a's
    assert args[0] == 1234 and args[3:6] == (4, 5, 3)
    assert args[7] == 2 and args[10] == 1 and args[14] == 3


def test_other_not_implemented_errors_pass_through(monkeypatch):
    from cutrans.backends._cublas import gemm
    _fake_cublas(monkeypatch, NotImplementedError("something else"))
    with pytest.raises(NotImplementedError, match="something else"):
        gemm(_DeviceArray((2, 2)), _DeviceArray((2, 2)), _DeviceArray((2, 2)))
