"""checks="device" through the PyTorch adapter: no host read, flags in a status tensor; on a
GPU, the fused loss captured in a CUDA graph and under torch.compile(mode="reduce-overhead")
replays with new data like eager."""
import numpy as np
import pytest

import cutrans
from cutrans import _status, _validate
from interop_cases import fused_case


def tensors(torch, seed=0, device="cpu", dtype=None, **kw):
    enc, pred, w, b, y, tl, ul = fused_case(seed, **kw)
    dtype = dtype or torch.float64
    floats = [torch.tensor(a, dtype=dtype, device=device, requires_grad=True)
              for a in (enc, pred, w, b)]
    # device data, host lengths: nothing is read back
    return floats, torch.tensor(y, device=device), torch.tensor(tl), torch.tensor(ul)


def test_device_checks_match_host_checks_and_read_nothing(monkeypatch):
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import transducer_loss
    floats, y, tl, ul = tensors(torch)
    want = transducer_loss(*floats, y, tl, ul)
    want.backward()
    want_g = [x.grad.clone() for x in floats]
    for x in floats:
        x.grad = None
    reads = []
    real = _validate.host_read
    monkeypatch.setattr(_validate, "host_read", lambda x: reads.append(x) or real(x))
    status = torch.zeros((), dtype=torch.int32)
    got = transducer_loss(*floats, y, tl, ul, checks="device", status=status)
    got.backward()
    assert reads == [] and int(status) == 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for x, g in zip(floats, want_g):
        torch.testing.assert_close(x.grad, g, rtol=0, atol=0)


def test_module_status_buffer_collects_flags():
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import TransducerLoss
    floats, y, tl, ul = tensors(torch)
    lin = torch.nn.Linear(floats[0].shape[-1], floats[2].shape[0], dtype=torch.float64)
    loss_fn = TransducerLoss(lin, checks="device")
    loss_fn(*floats[:2], y, tl, ul).backward()
    assert int(loss_fn.status) == 0
    bad = y.clone()
    bad[0, 0] = 99
    loss_fn(*floats[:2], bad, tl, ul).backward()  # no exception, no crash
    # the bad label leaves sample 0 without an alignment: its loss is not finite either
    assert int(loss_fn.status) == _status.BAD_LABEL | _status.NON_FINITE
    with pytest.raises(ValueError, match=r"outside \[0, V\)"):
        cutrans.raise_for_status(loss_fn.status)
    loss_fn.status.zero_()
    assert int(loss_fn.status) == 0


def test_device_checks_argument_rules():
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import transducer_loss
    floats, y, tl, ul = tensors(torch)
    with pytest.raises(TypeError, match=r"status: checks='device' needs an int32 status"):
        transducer_loss(*floats, y, tl, ul, checks="device")
    with pytest.raises(ValueError, match=r"status: only with checks='device'"):
        transducer_loss(*floats, y, tl, ul, status=torch.zeros((), dtype=torch.int32))
    with pytest.raises(ValueError, match=r"checks: 'device' needs reduction 'mean' or 'sum'"):
        transducer_loss(*floats, y, tl, ul, checks="device", reduction="none",
                        status=torch.zeros((), dtype=torch.int32))


def _cuda(torch):
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")


@pytest.mark.gpu
def test_cuda_graph_capture_replays_new_data_like_eager():
    """The fused loss and its backward captured in one CUDA graph (checks="device", host
    lengths; the GEMMs through the capture-safe cuBLAS route, whose handle the warm-up
    makes): replays on new data of the same shapes give eager's loss and gradients."""
    torch = pytest.importorskip("torch")
    _cuda(torch)
    from cutrans.interop.torch import transducer_loss
    floats, y, tl, ul = tensors(torch, device="cuda", dtype=torch.float32)
    static = [x.detach().clone().requires_grad_() for x in floats]
    status = torch.zeros((), dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: kernels compiled, plan cached, cuBLAS handle
        for _ in range(2):
            transducer_loss(*static, y, tl, ul, checks="device", status=status).backward()
    torch.cuda.current_stream().wait_stream(side)
    for x in static:
        x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = transducer_loss(*static, y, tl, ul, checks="device", status=status)
        loss.backward()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(2):
        with torch.no_grad():
            for x in static:
                x.copy_(torch.randn(x.shape, generator=gen, device="cuda"))
        graph.replay()
        eager = [x.detach().clone().requires_grad_() for x in static]
        want = transducer_loss(*eager, y, tl, ul)
        want.backward()
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
        for x, e in zip(static, eager):
            torch.testing.assert_close(x.grad, e.grad, rtol=1e-5, atol=1e-6)
    assert int(status) == 0


@pytest.mark.gpu
def test_compile_reduce_overhead_matches_eager():
    torch = pytest.importorskip("torch")
    _cuda(torch)
    from cutrans.interop.torch import transducer_loss
    floats, y, tl, ul = tensors(torch, device="cuda", dtype=torch.float32)
    status = torch.zeros((), dtype=torch.int32, device="cuda")

    def loss_of(*f):
        return transducer_loss(*f, y, tl, ul, checks="device", status=status)
    compiled = torch.compile(loss_of, mode="reduce-overhead")
    for seed in range(3):
        xs = [torch.tensor(np.random.default_rng(seed).standard_normal(tuple(x.shape)),
                           dtype=x.dtype, device="cuda", requires_grad=True) for x in floats]
        got = compiled(*xs)
        want = transducer_loss(*[x.detach() for x in xs], y, tl, ul)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert int(status) == 0
