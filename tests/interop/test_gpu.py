"""CUDA paths of the adapters (CuPy backend). Skipped without a GPU."""
import numpy as np
import pytest

from interop_cases import fused_case, logits_case

pytestmark = pytest.mark.gpu


def _torch_cuda():
    torch = pytest.importorskip("torch")
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    return torch


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_torch_cuda_matches_cpu_on_a_side_stream(dtype):
    """CUDA (logits non-contiguous, on a side stream) and CPU results of both ops are held
    to the same per-dtype tolerances against a float64 oracle on the stored values
    (tests/tolerances.py); float32/float64 CUDA also equals CPU at torch's defaults."""
    torch = _torch_cuda()
    import np_reference as ref
    from cutrans.interop.torch import rnnt_loss, transducer_loss
    from tolerances import assert_close
    dt = getattr(torch, dtype)
    low = dtype in ("float16", "bfloat16")
    logits, targets, t_len, u_len = logits_case(0, V=9)
    x = torch.tensor(logits).to(dt)
    ints = [torch.tensor(a) for a in (targets, t_len, u_len)]
    xc = x.cuda().permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3).requires_grad_()
    xh = x.clone().requires_grad_()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        lc = rnnt_loss(xc, *[a.cuda() for a in ints], blank=0)
        lc.backward()
    torch.cuda.current_stream().wait_stream(side)
    lh = rnnt_loss(xh, *ints, blank=0)
    lh.backward()
    B = len(t_len)
    losses, grad = ref.logits_loss_grad(x.double().numpy(), targets, t_len, u_len, 0,
                                        upstream=np.full(B, 1.0 / B))
    for where, loss, g in (("cuda", lc, xc.grad), ("cpu", lh, xh.grad)):
        # the loss comes back in the logits' dtype (torchaudio): rounded for 16 bits
        assert_close(loss, losses.mean(), "logits", dtype, "loss_rounded" if low else "loss",
                     f"rnnt_loss {where}")
        assert_close(g, grad, "logits", dtype, "grad", f"rnnt_loss grad {where}")
    if not low:
        torch.testing.assert_close(lc.cpu(), lh)
        torch.testing.assert_close(xc.grad.cpu(), xh.grad)
    case = [torch.tensor(a) for a in fused_case(1)]
    fl = [a.to(dt).requires_grad_() for a in case[:4]]
    flc = [a.detach().cuda().requires_grad_() for a in fl]
    lh = transducer_loss(*fl, *case[4:])
    lc = transducer_loss(*flc, *[a.cuda() for a in case[4:]])
    lh.backward()
    lc.backward()
    B = len(case[5])
    losses, grads = ref.fused_loss_grads(*(a.detach().double().numpy() for a in fl),
                                         *(a.numpy() for a in case[4:]), 0,
                                         upstream=np.full(B, 1.0 / B))
    for where, loss, leaves in (("cuda", lc, flc), ("cpu", lh, fl)):
        assert_close(loss, losses.mean(), "fused", dtype, "loss", f"transducer_loss {where}")
        for name, leaf, want in zip(("enc", "pred", "weight", "bias"), leaves, grads):
            assert_close(leaf.grad, want, "fused", dtype, name, f"d{name} {where}")
    if not low:
        torch.testing.assert_close(lc.cpu(), lh)
        for a, b in zip(flc, fl):
            torch.testing.assert_close(a.grad.cpu(), b.grad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("lengths", ["cpu", "cuda"])
def test_torch_cuda_host_checks_raise_the_cpu_error(reduction, lengths):
    """checks="host" on CUDA tensors (the checks read back at the end of the call): a bad
    label, or a NaN, raises what the CPU tensors' checks raise before the work."""
    torch = _torch_cuda()
    from cutrans.interop.torch import transducer_loss
    case = [torch.tensor(a) for a in fused_case(1)]
    b = int(torch.nonzero(case[6] > 0)[0, 0])
    for i, at, bad in ((4, (b, 0), 10**6), (4, (b, 0), 0), (0, (0, 0, 0), float("nan"))):
        host = [a.clone() for a in case]
        host[i][at] = bad
        with pytest.raises(ValueError) as want:
            transducer_loss(*host, reduction=reduction)
        dev = [a.cuda() for a in host[:5]] + [a.to(lengths) for a in host[5:]]
        with pytest.raises(ValueError) as got:
            transducer_loss(*dev, reduction=reduction)
        assert str(got.value) == str(want.value)


def test_torch_cuda_rnnt_loss_reads_once_and_raises_the_cpu_error(monkeypatch):
    """rnnt_loss on CUDA logits and labels, lengths on the CPU: the forward reads one status
    word back, the backward nothing; a bad label, a NaN or a masked label raises the CPU
    tensors' error."""
    torch = _torch_cuda()
    from cutrans import _validate
    from cutrans.interop.torch import rnnt_loss
    logits, targets, t_len, u_len = (torch.tensor(a) for a in logits_case(4, V=9))
    x = logits.float().cuda().requires_grad_()
    reads = []
    real = _validate.host_read
    monkeypatch.setattr(_validate, "host_read", lambda a: reads.append(type(a)) or real(a))
    loss = rnnt_loss(x, targets.cuda(), t_len, u_len, blank=0)
    assert len(reads) == 1
    loss.backward()
    assert len(reads) == 1
    monkeypatch.undo()
    xh = logits.float().requires_grad_()
    want = rnnt_loss(xh, targets, t_len, u_len, blank=0)
    want.backward()
    torch.testing.assert_close(loss.cpu(), want)
    torch.testing.assert_close(x.grad.cpu(), xh.grad)
    masked = (0, slice(None), 0, int(targets[0, 0]))  # sample 0 cannot emit its 1st label
    for i, at, bad in ((1, (0, 0), 10**6), (1, (0, 0), 0), (0, (0, 0, 0, 2), float("nan")),
                       (0, masked, float("-inf"))):
        host = [a.clone() for a in (logits.float(), targets)]
        host[i][at] = bad
        with pytest.raises(ValueError) as want_err:
            rnnt_loss(*host, t_len, u_len, blank=0)
        with pytest.raises(ValueError) as got_err:
            rnnt_loss(host[0].cuda(), host[1].cuda(), t_len, u_len, blank=0)
        assert str(got_err.value) == str(want_err.value)


@pytest.mark.parametrize("second", [False, True])
def test_torch_cuda_device_index_and_compile(second):
    torch = _torch_cuda()
    if second and torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    import cutrans
    from cutrans.interop.torch import transducer_loss
    dev = f"cuda:{1 if second else 0}"
    case = fused_case(2)
    fl = [torch.tensor(a, device=dev, dtype=torch.float32, requires_grad=True) for a in case[:4]]
    ints = [torch.tensor(a, device=dev) for a in case[4:]]
    f = torch.compile(lambda *a: transducer_loss(*a, *ints, reduction="sum"), fullgraph=True)
    loss = f(*fl)
    loss.backward()
    assert loss.device == torch.device(dev) and fl[0].grad.device == torch.device(dev)
    ref = cutrans.transducer_loss(*[a.astype(np.float32) for a in case[:4]], *case[4:],
                                  reduction="sum")
    np.testing.assert_allclose(loss.item(), float(ref.loss), rtol=1e-5)
    for g, r in zip(fl, ref.grads):
        np.testing.assert_allclose(g.grad.cpu().numpy(), r, rtol=1e-4, atol=1e-5)


def test_jax_gpu_buffer_callback_matches_cpu():
    jax = pytest.importorskip("jax")
    pytest.importorskip("cupy")
    if jax.default_backend() not in ("gpu", "cuda"):
        pytest.skip("no JAX GPU backend")
    import cutrans
    from cutrans.interop import jax as cj
    logits, targets, t_len, u_len = logits_case(3)
    x = logits.astype(np.float32)
    loss, g = jax.jit(jax.value_and_grad(lambda x: cj.rnnt_loss(x, targets, t_len, u_len)))(x)
    want, want_g = cutrans.rnnt_loss(x, targets, t_len, u_len, return_grad=True)
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    np.testing.assert_allclose(g, want_g, rtol=1e-3, atol=1e-5)


def _torchaudio(device):
    """torchaudio is on the GPU machines only (its CPU wheel needs libc10_cuda)."""
    torch = pytest.importorskip("torch")
    ta = pytest.importorskip("torchaudio.functional")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    return torch, ta


def _torchaudio_case(device, keep=None):
    """Padded case with zero-label and one-frame samples; ``keep``: sample indices."""
    torch = pytest.importorskip("torch")
    logits, targets, t_len, u_len = logits_case(5, B=6, T=6, U=4, V=7)
    if keep is not None:
        logits, targets, t_len, u_len = (a[keep] for a in (logits, targets, t_len, u_len))
    ints = [torch.tensor(a, dtype=torch.int32, device=device) for a in (targets, t_len, u_len)]
    return logits, ints, t_len, u_len


def _edge(t_len, u_len):
    """Samples where torchaudio's CUDA kernel is wrong: no labels, or a single frame."""
    return (np.asarray(u_len) == 0) | (np.asarray(t_len) == 1)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchaudio(device, reduction):
    """Loss and gradient against torchaudio; on CUDA on the samples where torchaudio is
    right (see test_torchaudio_cuda_wrong_for_zero_labels_or_one_frame)."""
    torch, ta = _torchaudio(device)
    from cutrans.interop.torch import rnnt_loss
    _, _, t_len, u_len = _torchaudio_case("cpu")
    keep = np.flatnonzero(~_edge(t_len, u_len)) if device == "cuda" else None
    logits, args, t_len, u_len = _torchaudio_case(device, keep)
    assert device == "cpu" or (len(t_len) >= 2 and not _edge(t_len, u_len).any())
    x1 = torch.tensor(logits, dtype=torch.float32, device=device, requires_grad=True)
    x2 = torch.tensor(logits, dtype=torch.float32, device=device, requires_grad=True)
    ours = rnnt_loss(x1, *args, blank=0, reduction=reduction)
    theirs = ta.rnnt_loss(x2, *args, blank=0, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.sum().backward()
    theirs.sum().backward()
    for b in range(len(t_len)):  # the valid lattice (padding is not torchaudio's contract)
        sl = (b, slice(0, int(t_len[b])), slice(0, int(u_len[b]) + 1))
        torch.testing.assert_close(x1.grad[sl], x2.grad[sl], rtol=1e-4, atol=1e-5)


def _edge_losses(device):
    """Per-sample fp32 losses of torchaudio on ``device`` and the float64 reference."""
    torch, ta = _torchaudio(device)
    from np_reference import logits_loss_grad
    logits, args, t_len, u_len = _torchaudio_case(device)
    if not (_edge(t_len, u_len).any() and (~_edge(t_len, u_len)).any()):
        pytest.fail("the case needs edge and ordinary samples")  # not an xfail's assertion
    x = torch.tensor(logits, dtype=torch.float32, device=device)
    theirs = ta.rnnt_loss(x, *args, blank=0, reduction="none").cpu().numpy()
    want, _ = logits_loss_grad(logits.astype(np.float32), args[0].cpu().numpy(), t_len, u_len,
                               0, need_grad=False)
    return theirs, want, _edge(t_len, u_len)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "torchaudio bug: its CUDA rnnt_loss returns a wrong loss (0, or negative: -0.069 seen) "
    "for samples with target_length == 0 or logit_length == 1 (its CPU kernel and cutrans "
    "are right; GPU-FINDINGS.md). Strict: an XPASS means torchaudio fixed it"))
def test_torchaudio_cuda_wrong_for_zero_labels_or_one_frame():
    theirs, want, edge = _edge_losses("cuda")
    np.testing.assert_allclose(theirs[edge], want[edge], rtol=1e-5)


def test_torchaudio_cpu_and_cutrans_cuda_right_for_zero_labels_or_one_frame():
    """Where torchaudio's CUDA kernel is wrong, its CPU kernel and cutrans (CUDA) agree with
    the float64 reference."""
    torch, _ = _torchaudio("cuda")
    from cutrans.interop.torch import rnnt_loss
    theirs_cpu, want, edge = _edge_losses("cpu")
    np.testing.assert_allclose(theirs_cpu, want, rtol=1e-5)
    logits, args, _, _ = _torchaudio_case("cuda")
    x = torch.tensor(logits, dtype=torch.float32, device="cuda")
    ours = rnnt_loss(x, *args, blank=0, reduction="none").cpu().numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-5)
    assert edge.sum() >= 2
