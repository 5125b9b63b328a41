"""Any DLPack array in, the same kind of array out (cutrans._arrays), on the CPU.

PyTorch and JAX CPU arrays go through the framework-free core and come back as tensors /
JAX arrays equal to the NumPy results; mixes of kinds are TypeErrors naming the argument;
host integer arrays may accompany device (here: any) float arrays; non-contiguous inputs
are copied with a CopyWarning.
"""
import numpy as np
import pytest

import cutrans
from cutrans.api import CopyWarning


def fused_case(seed=0, B=3, T=5, U=3, V=7, H=6, dtype=np.float32):
    rng = np.random.default_rng(seed)
    t_len = rng.integers(1, T + 1, B)
    u_len = rng.integers(0, U + 1, B)
    t_len[0], u_len[0] = T, U
    floats = [rng.standard_normal((B, T, H)), rng.standard_normal((B, U + 1, H)),
              rng.standard_normal((V, H)) / 3, rng.standard_normal(V) / 10]
    return [x.astype(dtype) for x in floats], rng.integers(1, V, (B, U)), t_len, u_len


def logits_case(seed=1, B=3, T=5, U=3, V=7):
    (enc, pred, w, b), targets, t_len, u_len = fused_case(seed, B, T, U, V)
    return np.tanh(enc[:, :, None] + pred[:, None]) @ w.T + b, targets, t_len, u_len


def _jax_on_cpu():
    """JAX arrays on the CPU device (on a GPU machine JAX's default device is the GPU, which
    would run the CuPy backend against the NumPy reference: another test's comparison)."""
    jax = pytest.importorskip("jax")
    cpu = jax.devices("cpu")[0]

    def to(x):
        return jax.device_put(np.asarray(x), cpu)
    return to, np.asarray, "ArrayImpl"


FRAMEWORKS = {
    "torch": lambda: (pytest.importorskip("torch").from_numpy,
                      lambda t: t.numpy(), "Tensor"),
    "jax": _jax_on_cpu,
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_op_returns_the_callers_arrays(framework, reduction):
    to, back, cls = FRAMEWORKS[framework]()
    floats, targets, t_len, u_len = fused_case()
    want = cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction=reduction)
    got = cutrans.transducer_loss(*map(to, floats), *map(to, (targets, t_len, u_len)),
                                  reduction=reduction)
    assert type(got.loss).__name__ == cls
    np.testing.assert_allclose(back(got.loss), want.loss, rtol=1e-6)
    for g, w in zip(got.grads, want.grads):
        assert type(g).__name__ == cls
        np.testing.assert_allclose(back(g), w, rtol=1e-6, atol=1e-7)
    # the forward/backward pair too, with a caller-kind upstream gradient
    losses, ctx = cutrans.transducer_forward(*map(to, floats), *map(to, (targets, t_len, u_len)))
    assert type(losses).__name__ == cls
    up = np.linspace(0.5, 2.0, 3).astype(np.float32)
    grads = cutrans.transducer_backward(ctx, to(up))
    _, ref_ctx = cutrans.transducer_forward(*floats, targets, t_len, u_len)
    for g, w in zip(grads, cutrans.transducer_backward(ref_ctx, up)):
        assert type(g).__name__ == cls
        np.testing.assert_allclose(back(g), w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_logits_op_returns_the_callers_arrays(framework):
    to, back, cls = FRAMEWORKS[framework]()
    args = logits_case()
    want_l, want_g = cutrans.rnnt_loss(*args, return_grad=True)
    loss, grad = cutrans.rnnt_loss(*map(to, args), return_grad=True)
    assert type(loss).__name__ == cls and type(grad).__name__ == cls
    np.testing.assert_allclose(back(loss), want_l, rtol=1e-6)
    np.testing.assert_allclose(back(grad), want_g, rtol=1e-6, atol=1e-7)


def test_torch_bfloat16_travels_as_a_16_bit_view():
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    floats, targets, t_len, u_len = fused_case()
    low = [x.astype(ml_dtypes.bfloat16) for x in floats]
    want = cutrans.transducer_loss(*low, targets, t_len, u_len)
    tens = [torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16) for x in floats]
    got = cutrans.transducer_loss(*tens, targets, t_len, u_len)  # host NumPy integer arrays
    for g, w in zip(got.grads, want.grads):
        assert g.dtype == torch.bfloat16
        np.testing.assert_array_equal(g.float().numpy(), w.astype(np.float32))


def test_torch_inputs_are_zero_copy():
    torch = pytest.importorskip("torch")
    from cutrans import _arrays
    t = torch.zeros(4, 3)
    io = _arrays.boundary([("enc", t)])
    a = io.to_core(t)
    a[0, 0] = 5.0  # a view: the tensor sees the write
    assert t[0, 0] == 5.0
    back = io.from_core(a)
    back[1, 1] = 7.0
    assert t[1, 1] == 7.0


def test_mixed_kinds_are_type_errors():
    torch = pytest.importorskip("torch")
    floats, targets, t_len, u_len = fused_case()
    tens = [torch.from_numpy(x) for x in floats]
    with pytest.raises(TypeError, match=r"pred: expected a torch array on the CPU like enc, "
                                        r"got a numpy array on the CPU"):
        cutrans.transducer_loss(tens[0], floats[1], *tens[2:], targets, t_len, u_len)
    # host integer arrays next to the floats are allowed (no device-to-host copy on a GPU)
    out = cutrans.transducer_loss(*tens, torch.from_numpy(targets), t_len, u_len)
    assert isinstance(out.loss, torch.Tensor)


def test_non_contiguous_inputs_are_copied_with_a_warning():
    floats, targets, t_len, u_len = fused_case()
    enc_t = np.ascontiguousarray(floats[0].transpose(1, 0, 2)).transpose(1, 0, 2)
    with pytest.warns(CopyWarning, match=r"enc: not C-contiguous .* cutrans copies it"):
        got = cutrans.transducer_loss(enc_t, *floats[1:], targets, t_len, u_len)
    want = cutrans.transducer_loss(*floats, targets, t_len, u_len)
    np.testing.assert_array_equal(got.grads.enc, want.grads.enc)


@pytest.mark.parametrize("entry", ["transducer_loss", "rnnt_loss", "torch transducer_loss"])
def test_copy_warning_points_at_the_callers_line(entry):
    """The warning names the line that passed the array, through every entry point."""
    floats, targets, t_len, u_len = fused_case()
    enc_t = np.ascontiguousarray(floats[0].transpose(1, 0, 2)).transpose(1, 0, 2)
    logits = np.zeros((3, 5, 4, 14))[..., ::2]
    with pytest.warns(CopyWarning) as record:
        if entry == "transducer_loss":
            cutrans.transducer_loss(enc_t, *floats[1:], targets, t_len, u_len)
        elif entry == "rnnt_loss":
            cutrans.rnnt_loss(logits, targets, t_len, u_len)
        else:
            torch = pytest.importorskip("torch")
            from cutrans.interop.torch import transducer_loss
            transducer_loss(*(torch.from_numpy(x) for x in (enc_t, *floats[1:], targets,
                                                             t_len, u_len)))
    assert {w.filename for w in record} == {__file__}


class _FakeCudaDevice:
    """cupy.cuda.Device stand-in: a context that makes ``id`` current and restores the
    previous device on exit (as CuPy's does)."""

    current = 0

    def __init__(self, device_id=None):
        self.id = _FakeCudaDevice.current if device_id is None else device_id

    def __enter__(self):
        self._prev, _FakeCudaDevice.current = _FakeCudaDevice.current, self.id
        return self

    def __exit__(self, *exc):
        _FakeCudaDevice.current = self._prev


class _OnCuda:
    def __init__(self, device_id):
        self.device_id = device_id

    def __dlpack_device__(self):
        return (2, self.device_id)  # kDLCUDA


def test_a_call_runs_on_its_datas_device_and_leaves_the_callers_current(monkeypatch):
    """Issue 11 item 4, without a GPU: the core runs inside the data's device (here: 1
    while the caller's current device is 0) and restores the caller's, also on an error."""
    import sys
    import types
    from cutrans import _arrays
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=_FakeCudaDevice)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_FakeCudaDevice, "current", 0)
    seen = []

    @_arrays.on_data_device
    def op(x, fail=False):
        seen.append(_FakeCudaDevice.current)
        if fail:
            raise ValueError("x: bad")
        return "done"

    assert op(_OnCuda(1)) == "done" and seen == [1]
    assert _FakeCudaDevice.current == 0
    with pytest.raises(ValueError, match="x: bad"):
        op(x=_OnCuda(1), fail=True)
    assert seen == [1, 1] and _FakeCudaDevice.current == 0
    assert op(np.zeros(2)) == "done" and seen[-1] == 0  # host data: the device is untouched
