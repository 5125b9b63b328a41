"""The CuPy backend (the kernels on a GPU) vs the NumPy backend: op by op and end to end.

Marked ``gpu`` and skipped unless CuPy sees a GPU. Same checks as tests/kernels (emulated).
"""
import os
import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cupy.is_available(), reason="no CUDA GPU for CuPy")]

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tolerances
from kcases import COMPUTE, LOW, STORAGE, TOPOLOGIES, Case  # noqa: E402
from kops import (check_joint_backward, check_joint_forward, check_lattice,  # noqa: E402
                  check_row_grad, check_row_stats)
from kpipeline import (bits, check_rnnt_loss, check_transducer_loss, fused_inputs,  # noqa: E402
                       logits_inputs)

import cutrans  # noqa: E402
from cutrans._fused import workspace_bytes  # noqa: E402

ROW_CASES = [(0, 4, 5, 3, 5), (1, 3, 4, 4, 150), (2, 2, 3, 2, 600), (3, 8, 20, 10, 2048),
             (4, 3, 4, 3, 8500)]  # the last: a block per row (more than 8192 logits)
_STATS = {}


@pytest.fixture(scope="module")
def be():
    from cutrans.backends.kernel_backend import cupy_backend
    return cupy_backend()


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("shape", ROW_CASES)
def test_row_stats(be, shape, dtype, layout):
    case = Case(*shape)
    for chunks in case.chunkings():
        check_row_stats(be, case, dtype, layout, chunks, _STATS)


@pytest.mark.parametrize("opts", [(0.0, 0.0), (0.3, 0.05)])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("dtype", STORAGE)
def test_row_grad(be, dtype, layout, in_place, opts):
    for shape in ROW_CASES:
        case = Case(*shape)
        for chunks in case.chunkings()[1:3]:
            check_row_grad(be, case, dtype, layout, chunks, in_place=in_place,
                           fastemit=opts[0], clamp=opts[1], stats=_STATS)


@pytest.mark.parametrize("need_grad,alias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("dtype", COMPUTE)
@pytest.mark.parametrize("shape", [(0, 5, 6, 4, 6), (1, 3, 80, 40, 5), (2, 1, 1, 0, 5),
                                   (3, 16, 300, 120, 5)])
@pytest.mark.parametrize("topo", list(TOPOLOGIES))
def test_lattice(be, topo, shape, dtype, need_grad, alias):
    check_lattice(be, Case(*shape, topo=topo), dtype, need_grad, alias, _STATS)


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("topo", [t for t in TOPOLOGIES if t != "rnnt"])
def test_row_ops_variants(be, topo, dtype, layout):
    for shape in ROW_CASES:
        case = Case(*shape, topo=topo)
        for chunks in case.chunkings()[1:3]:
            check_row_stats(be, case, dtype, layout, chunks, _STATS)
            check_row_grad(be, case, dtype, layout, chunks, in_place=True, fastemit=0.0,
                           clamp=0.05, stats=_STATS, with_lse=True)


@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("H", [16, 200, 640])
def test_joint_forward(be, H, dtype):
    case = Case(4, 4, 5, 3, 5)
    for act in (0, 1, 2):
        for chunks in case.chunkings()[1:]:
            check_joint_forward(be, case, dtype, H, act, chunks, _STATS)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("H", [16, 200, 640])
def test_joint_backward(be, H, dtype, aligned):
    """dh rows off the 16-byte grid (the per-element path) and on it (16-byte words)."""
    case = Case(5, 4, 5, 3, 5)
    ldh = -(-H // 8) * 8 if aligned else H + 2
    for act in (0, 1, 2):
        for chunks in case.chunkings():
            check_joint_backward(be, case, dtype, H, act, chunks, _STATS, ldh=ldh)


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dtype", STORAGE)
def test_rnnt_loss(dtype, layout):
    check_rnnt_loss("cupy", cupy, 0, dtype, layout, stats=_STATS)
    check_rnnt_loss("cupy", cupy, 1, dtype, layout, fastemit=0.2, clamp=0.05, stats=_STATS)


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transducer_loss(dtype, activation):
    check_transducer_loss("cupy", cupy, 3, dtype, activation=activation, stats=_STATS)
    check_transducer_loss("cupy", cupy, 4, dtype, activation=activation, fastemit=0.1,
                          clamp=0.05, sample_wise=True, stats=_STATS)


def test_deterministic_and_side_stream():
    args = [cupy.asarray(a) for a in fused_inputs(7, "float32")[1]]
    budget = workspace_bytes(*args[:3], rows_per_chunk=12)  # several chunks
    a = cutrans.transducer_loss(*args, max_workspace_bytes=budget)  # backend: cupy arrays
    cupy.cuda.Device().synchronize()
    with cupy.cuda.Stream(non_blocking=True) as s:
        b = cutrans.transducer_loss(*args, max_workspace_bytes=budget)
        s.synchronize()
    assert [bits(x) for x in a.grads] == [bits(x) for x in b.grads]
    assert bits(a.loss) == bits(b.loss)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_host_checks_of_device_arrays_read_once_at_the_end(monkeypatch, reduction):
    """checks="host" on CuPy arrays (lengths on the host): one device-to-host read, the
    status word at the end (``api._run_checked``); a bad label or a NaN raises the error the
    NumPy backend raises before its work."""
    from cutrans import _validate
    case, args = fused_inputs(3, "float32")
    kw = dict(blank=case.blank, reduction=reduction)
    want = cutrans.transducer_loss(*args[:5], *args[5:], **kw)
    reads = []
    real = _validate.host_read
    monkeypatch.setattr(_validate, "host_read", lambda x: reads.append(type(x)) or real(x))
    dev = [cupy.asarray(a) for a in args[:5]]
    got = cutrans.transducer_loss(*dev, *args[5:], **kw)
    assert reads == [cupy.ndarray]
    np.testing.assert_allclose(cupy.asnumpy(got.loss), want.loss, rtol=1e-5)
    b = int(np.flatnonzero(case.U > 0)[0])  # a sample with labels
    for i, at, bad in ((4, (b, 0), 10**6), (4, (b, 0), case.blank), (0, (0, 0, 0), np.nan),
                       (2, (1, 2), np.inf)):
        host = [a.copy() for a in args]
        host[i][at] = bad
        with pytest.raises(ValueError) as eager:
            cutrans.transducer_loss(*host, **kw)
        with pytest.raises(ValueError) as late:
            cutrans.transducer_loss(*[cupy.asarray(a) for a in host[:5]], *host[5:], **kw)
        assert str(late.value) == str(eager.value)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_rnnt_loss_host_checks_of_device_arrays_read_once_at_the_end(monkeypatch, layout):
    """rnnt_loss on CuPy logits and labels (lengths on the host): one device-to-host read,
    the status word at the end; a bad label, a NaN logit, -inf at blank or a masked label
    raises the error the NumPy backend raises."""
    from cutrans import _validate
    case, args = logits_inputs(3, "float32", layout)
    kw = dict(blank=case.blank, layout=layout, return_grad=True)
    want = cutrans.rnnt_loss(*args, **kw)
    reads = []
    real = _validate.host_read
    monkeypatch.setattr(_validate, "host_read", lambda x: reads.append(type(x)) or real(x))
    got = cutrans.rnnt_loss(cupy.asarray(args[0]), cupy.asarray(args[1]), *args[2:], **kw)
    assert reads == [cupy.ndarray]
    for g, w in zip(got, want):
        np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-5, atol=1e-6)
    b = int(np.flatnonzero(case.U > 0)[0])  # a sample with labels
    off = int(np.sum(case.T[:b] * (case.U[:b] + 1)))

    def point(t):  # sample b's lattice point (t, u=0), a valid row
        return (b, t, 0) if layout == "padded" else (off + t * (int(case.U[b]) + 1),)
    label = int(args[1][b, 0])
    frames = range(int(case.T[b]))
    for edits in ([(1, (b, 0), 10**6)], [(1, (b, 0), case.blank)],
                  [(0, point(0) + (label,), np.nan)], [(0, point(0) + (case.blank,), -np.inf)],
                  [(0, point(t) + (label,), -np.inf) for t in frames]):  # no alignment of b
        host = [a.copy() for a in args]
        for i, at, bad in edits:
            host[i][at] = bad
        with pytest.raises(ValueError) as eager:
            cutrans.rnnt_loss(*host, **kw)
        with pytest.raises(ValueError) as late:
            cutrans.rnnt_loss(cupy.asarray(host[0]), cupy.asarray(host[1]), *host[2:], **kw)
        assert str(late.value) == str(eager.value)


@pytest.mark.parametrize("dtype", STORAGE)
def test_pipelined_one_pass(monkeypatch, dtype):
    """CUTRANS_PIPELINE=on: the lattices on the side stream (many groups; split samples and
    sample-wise too) give what the NumPy reference gives for the same schedule, the same
    bits twice, also when the caller's stream is not the default one."""
    from cutrans import _fused
    from cutrans.backends._side_stream import CupySide, cupy_side
    monkeypatch.setattr(_fused, "PIPELINE", "on")
    assert isinstance(cupy_side(), CupySide)
    launches = []
    launch = CupySide.launch
    monkeypatch.setattr(CupySide, "launch", lambda self, slot, fn: (
        launches.append(slot), launch(self, slot, fn)))
    for seed, rows, sample_wise in ((3, 24, False), (4, 2, False), (5, 24, True)):
        case, args = fused_inputs(seed, dtype)
        workspace = workspace_bytes(*args[:3], rows_per_chunk=rows)
        n = len(launches)
        out = check_transducer_loss("cupy", cupy, seed, dtype, workspace=workspace,
                                    sample_wise=sample_wise, stats=_STATS)
        assert len(launches) - n >= 2  # the side stream ran lattices
        with cupy.cuda.Stream(non_blocking=True) as s:
            again = cutrans.transducer_loss(*[cupy.asarray(a) for a in args],
                                            blank=case.blank, max_workspace_bytes=workspace,
                                            sample_wise=sample_wise, reduction="sum")
            s.synchronize()
        assert bits(again.loss) == bits(out.loss)
        assert [bits(x) for x in again.grads] == [bits(x) for x in out.grads]


@pytest.mark.parametrize("data_device", [0, 1])
def test_runs_on_the_datas_device_and_keeps_the_callers(data_device):
    """Issue 11 item 4: data on device ``data_device`` while the caller's current device is
    0; the results live on the data's device, equal a NumPy run, and the current device is
    0 afterwards (with one GPU: the device-0 case only)."""
    if data_device >= cupy.cuda.runtime.getDeviceCount():
        pytest.skip("needs two CUDA devices")
    case, args = fused_inputs(23, "float32", B=3, T=9, U=4, V=30, H=32)
    want = cutrans.transducer_loss(*args, blank=case.blank)
    with cupy.cuda.Device(data_device):
        xargs = [cupy.asarray(a) for a in args]
    cupy.cuda.Device(0).use()
    got = cutrans.transducer_loss(*xargs, blank=case.blank)
    assert cupy.cuda.runtime.getDevice() == 0
    assert got.loss.device.id == data_device and all(g.device.id == data_device
                                                       for g in got.grads)
    np.testing.assert_allclose(cupy.asnumpy(got.loss), want.loss, rtol=1e-5)
    for g, w in zip(got.grads, want.grads):
        np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-4, atol=1e-5)


def test_cupy_stream_capture_replays_like_eager():
    """The core API on CuPy arrays with checks="device", captured with CuPy's own graph API
    (after warm-up calls, so that CuPy's pool has the blocks and the capture route its
    cuBLAS handle); replays on new data equal eager calls."""
    case, args = fused_inputs(21, "float32", B=4, T=12, U=5, V=40, H=64)
    floats = [cupy.asarray(a) for a in args[:4]]
    targets, t_len, u_len = cupy.asarray(args[4]), args[5], args[6]
    status = cupy.zeros((), dtype=cupy.int32)
    kw = dict(blank=case.blank, checks="device", status=status, max_workspace_bytes=1 << 16)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(2):
            cutrans.transducer_loss(*floats, targets, t_len, u_len, **kw)
        stream.synchronize()
        stream.begin_capture()
        out = cutrans.transducer_loss(*floats, targets, t_len, u_len, **kw)
        graph = stream.end_capture()
    rng = cupy.random.default_rng(0)
    for _ in range(2):
        with stream:
            for x in floats:
                x[...] = rng.standard_normal(x.shape, dtype=cupy.float32)
            graph.launch(stream)
            stream.synchronize()
        want = cutrans.transducer_loss(*[x.copy() for x in floats], targets, t_len, u_len,
                                       blank=case.blank, max_workspace_bytes=1 << 16)
        cupy.testing.assert_allclose(out.loss, want.loss, rtol=1e-5, atol=1e-6)
        for g, w in zip(out.grads, want.grads):
            cupy.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert int(status) == 0


def _logits_bits(args, blank, **kw):
    loss, grad = cutrans.rnnt_loss(*args, blank=blank, return_grad=True, **kw)
    return [bits(loss), bits(grad)]


def _fused_bits(args, blank, **kw):
    out = cutrans.transducer_loss(*args, blank=blank, **kw)
    return [bits(out.loss)] + [bits(g) for g in out.grads]


@pytest.mark.parametrize("dtype", STORAGE)
def test_identical_calls_give_identical_bits(dtype):
    """Two identical calls: bitwise-equal losses and gradients, logits op (padded and
    packed, FastEmit + clamp, 256-thread rows) and fused op (one chunk, many chunks,
    sample-wise; reductions mean and none): no float atomics, fixed reduction orders."""
    case, args = logits_inputs(11, dtype, "padded", B=8, T=30, U=10, V=600)
    xargs = [cupy.asarray(a) for a in args]
    pcase, pargs = logits_inputs(12, dtype, "packed", B=8, T=30, U=10, V=600)
    pxargs = [cupy.asarray(a) for a in pargs]
    fcase, fargs = fused_inputs(13, dtype, B=8, T=30, U=10, V=500, H=256)
    fxargs = [cupy.asarray(a) for a in fargs]
    small = workspace_bytes(*fargs[:3], rows_per_chunk=64)  # chunks of 64 rows, any dtype
    runs = []
    for _ in range(2):
        out = _logits_bits(xargs, case.blank, fastemit_lambda=0.1, clamp=0.5)
        out += _logits_bits(pxargs, pcase.blank, layout="packed", reduction="sum")
        for kw in (dict(), dict(max_workspace_bytes=small),
                   dict(max_workspace_bytes=small, sample_wise=True, reduction="none",
                        fastemit_lambda=0.2, clamp=0.1)):
            out += _fused_bits(fxargs, fcase.blank, **kw)
        cupy.cuda.Device().synchronize()
        runs.append(out)
    assert len(runs[0]) == 4 + 3 * 5
    for i, (a, b) in enumerate(zip(*runs)):
        assert a == b, f"output {i} differs between two identical calls"


def test_debug_reports_registers(monkeypatch, capfd):
    monkeypatch.setenv("CUTRANS_KERNEL_DEBUG", "1")
    check_rnnt_loss("cupy", cupy, 0, "float32", "packed")
    err = capfd.readouterr().err
    assert "cutrans[cupy] row_stats<float, 32, false>" in err and "registers=" in err


@pytest.fixture(scope="module", autouse=True)
def _error_report():
    """``CUTRANS_GPU_ERROR_REPORT=path``: write max abs/rel errors per op and dtype there."""
    yield
    path = os.environ.get("CUTRANS_GPU_ERROR_REPORT")
    if path and _STATS:
        with open(path, "w") as f:
            for k, (a, r) in sorted(_STATS.items()):
                f.write(f"{k}: max_abs={a:.3g} max_rel={r:.3g}\n")


def _no_less_exact(got, ours, ref, dtype, what, floor=0.0):
    """``got``'s error against the float64 ``ref`` is at most 4x that of ``ours`` (the
    NumPy backend in the same dtype), or the dtype's floor (tests/tolerances.py)."""
    from tolerances import FLOOR, scaled_error
    err, _ = scaled_error(got, ref, floor)
    base, _ = scaled_error(ours, ref, floor)
    assert err <= 4 * base + FLOOR[dtype], (
        f"{what}: error vs float64 {err:.3g} > 4 x NumPy's {base:.3g} + {FLOOR[dtype]:g}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("topo", [t for t in TOPOLOGIES if t != "rnnt"])
def test_variants_end_to_end(topo, dtype):
    """rnnt_loss and the fused op (split samples) with each variant on CUDA: against a
    float64 run on the same stored inputs, no less exact than the NumPy backend in the
    same dtype (comparing two float32 runs element by element doubles their errors: on an
    H100 tdt-omega's dW differed from NumPy's by 7e-5 on an entry of 0.013, both within
    1.5e-5 of max|dW| from float64)."""
    import numpy as np
    spec = dict(TOPOLOGIES[topo])
    case = Case(6, 4, 30, 12, 40, topo=topo)
    spec["blank"] = case.blank
    z = case.logits(dtype, "padded", pad_value=0.0)
    ints = (case.targets, case.T, case.U)
    kw = dict(spec, reduction="none", return_grad=True)
    ref = cutrans.rnnt_loss(z.astype(np.float64), *ints, backend="numpy", **kw)
    ours = cutrans.rnnt_loss(z, *ints, backend="numpy", **kw)
    got = cutrans.rnnt_loss(*(cupy.asarray(a) for a in (z, *ints)), **kw)
    _no_less_exact(got[0], ours[0], ref[0], dtype, f"{topo} loss", floor=1.0)
    _no_less_exact(got[1], ours[1], ref[1], dtype, f"{topo} grad")
    rng = np.random.default_rng(7)
    H = 32
    fl = [rng.standard_normal(s).astype(dtype) for s in (
        (case.B, case.T_max, H), (case.B, case.U_max + 1, H), (case.n_logits, H),
        (case.n_logits,))]
    kw = dict(spec, max_workspace_bytes=200_000)
    ref = cutrans.transducer_loss(*(a.astype(np.float64) for a in fl), *ints, backend="numpy",
                                  **kw)
    ours = cutrans.transducer_loss(*fl, *ints, backend="numpy", **kw)
    got = cutrans.transducer_loss(*(cupy.asarray(a) for a in fl), *ints, **kw)
    _no_less_exact(got.loss, ours.loss, ref.loss, dtype, f"{topo} fused loss", floor=1.0)
    for q, g, o, r in zip(("enc", "pred", "weight", "bias"), got.grads, ours.grads, ref.grads):
        _no_less_exact(g, o, r, dtype, f"{topo} fused d_{q}")


@pytest.mark.parametrize("dtype", LOW)
def test_one_pass_upstream_scale_on_device_arrays(dtype):
    """The one-pass backward's scale of 16-bit CuPy gradients (float32 product, one
    rounding; pieces): the scale-1 gradients times 2**16 and 1/3, rounded, as on the CPU."""
    from cutrans import api
    _, args = fused_inputs(14, dtype, B=3, T=8, U=4, V=40, H=16)
    _, ctx = cutrans.transducer_forward(*[cupy.asarray(a) for a in args], reduction="sum")
    unit = [g.get() for g in cutrans.transducer_backward(ctx, 1.0)]
    old = api.SCALE_PIECE
    for scale in (2.0 ** 16, 1 / 3, cupy.asarray([1 / 3], dtype=cupy.float32)):
        for piece in (old, 7):
            api.SCALE_PIECE = piece
            try:
                got = cutrans.transducer_backward(ctx, scale)
            finally:
                api.SCALE_PIECE = old
            s = np.float32(scale if isinstance(scale, float) else float(scale.get()[0]))
            for g, g1 in zip(got, unit):
                with np.errstate(over="ignore"):
                    want = (g1.astype(np.float32) * s).astype(g1.dtype)
                np.testing.assert_array_equal(g.get().astype(np.float32),
                                              want.astype(np.float32))
