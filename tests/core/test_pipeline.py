"""The pipelined one pass (``cutrans._fused.PIPELINE = "on"``): lattices on a side stream,
two workspace sets. On the CPU the side stream runs inline (``InlineSide``): the results and
the pipeline's order are checked here; the CuPy side stream's event protocol against a
stand-in CuPy. The concurrency itself needs a GPU (tests/gpu)."""
import sys
import types

import numpy as np
import pytest

import cutrans
from cutrans import _fused
from cutrans._fused import workspace_bytes
from cutrans.backends import NumpyBackend, _side_stream
from np_reference import fused_loss_grads
from tolerances import scaled_error
from test_fused import fused_case


def case(seed=3, B=7, T=6, U=4, V=9, H=5, dtype=np.float64):
    return fused_case(np.random.default_rng(seed), B, T, U, V, H, dtype=dtype)


@pytest.fixture
def pipeline(monkeypatch):
    def set_to(value):
        monkeypatch.setattr(_fused, "PIPELINE", value)
    return set_to


class RecordingSide:
    """Runs the lattices inline (like InlineSide) and logs the protocol calls."""

    def __init__(self, log):
        self.log = log

    def launch(self, slot, fn):
        self.log.append(("launch", slot))
        fn()
        self.log.append(("launched", slot))

    def wait(self, slot):
        self.log.append(("wait", slot))


class Recorder(NumpyBackend):
    """The NumPy backend, logging which group each stage works on (by its first row / b0)
    and which z buffer the row statistics read."""

    def __init__(self):
        self.log, self.z_of_row0 = [], {}

    def side_stream(self):
        return RecordingSide(self.log)

    def row_stats(self, z, layout, row0, n_rows, plan, topo, values, rbase=0, lse=None):
        self.log.append(("F", rbase))
        self.z_of_row0[rbase] = z.__array_interface__["data"][0]
        super().row_stats(z, layout, row0, n_rows, plan, topo, values, rbase, lse)

    def lattice(self, plan, topo, b0, b1, rbase, *args):
        self.log.append(("L", rbase))
        super().lattice(plan, topo, b0, b1, rbase, *args)

    def row_grad(self, z, grad, layout, row0, n_rows, plan, topo, coefs, scale, lam, clamp,
                 rbase=0, lse=None, coefs2=None):
        self.log.append(("B", rbase))
        super().row_grad(z, grad, layout, row0, n_rows, plan, topo, coefs, scale, lam, clamp,
                         rbase, lse, coefs2)


def test_pipelined_order_and_buffers(pipeline):
    """Main stream: F0 F1 B0 F2 B1 ... B_last; group i's lattice is launched in slot i % 2
    after F_i, the main stream waits for that slot before B_i, and consecutive groups use
    the two workspace sets in turn."""
    pipeline("on")
    c = case()
    rows = int((c[5] * (c[6] + 1)).sum())
    be = Recorder()
    cutrans.transducer_loss(*c, max_workspace_bytes=workspace_bytes(*c[:3], rows // 3),
                            backend=be)
    log = be.log
    groups = [r for kind, r in log if kind == "L"]
    assert len(groups) >= 4, log
    main = [(kind, r) for kind, r in log if kind in ("F", "B")]
    want = [("F", groups[0])]
    for prev, g in zip(groups, groups[1:]):
        want += [("F", g), ("B", prev)]
    want.append(("B", groups[-1]))
    assert [e for i, e in enumerate(main) if i == 0 or e != main[i - 1]] == want
    for i, g in enumerate(groups):
        slot = i % 2
        lat = log.index(("L", g))
        assert log[lat - 1] == ("launch", slot) and log[lat + 1] == ("launched", slot)
        assert log.index(("F", g)) < lat
        first_b = log.index(("B", g))
        waits = [k for k in range(lat, first_b) if log[k] == ("wait", slot)]
        assert waits, (g, log[lat:first_b])
    ptrs = [be.z_of_row0[g] for g in groups]
    assert ptrs[0] != ptrs[1] and ptrs[::2] == [ptrs[0]] * len(ptrs[::2])
    assert ptrs[1::2] == [ptrs[1]] * len(ptrs[1::2])


@pytest.mark.parametrize("sample_wise", [False, True])
@pytest.mark.parametrize("n_rows", [1, 5, 40])
def test_pipelined_matches_the_reference(pipeline, n_rows, sample_wise):
    """Every budget (1 row: every sample split, its chunks recomputed) gives the float64
    reference's loss and gradients, and the one-stream pass's to rounding."""
    c = case()
    budget = workspace_bytes(*c[:3], n_rows)
    pipeline("off")
    plain = cutrans.transducer_loss(*c, max_workspace_bytes=budget, sample_wise=sample_wise,
                                    reduction="sum")
    pipeline("on")
    out = cutrans.transducer_loss(*c, max_workspace_bytes=budget, sample_wise=sample_wise,
                                  reduction="sum")
    losses, grads = fused_loss_grads(*c, activation="tanh", blank=0)
    np.testing.assert_allclose(out.loss, losses.sum(), rtol=1e-12)
    np.testing.assert_allclose(out.loss, plain.loss, rtol=1e-13)
    for got, ref, one in zip(out.grads, grads, plain.grads):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got, one, rtol=1e-11, atol=1e-14)


#: pipelined vs one stream, max|diff| / max|one stream| per gradient. Measured (both CPU
#: backends): float32 9.1e-7 (TDT's samples split over chunks accumulate in another order),
#: 0 elsewhere; bfloat16 0, allowed one rounding of its output (2^-7 of the largest entry).
PIPELINED_TOL = {"float32": 8e-6, "bfloat16": 2.0 ** -7}


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pipelined_low_precision_and_variants(pipeline, backend, dtype):
    """16-bit inputs (split samples accumulate in float32) and TDT with omega (a second
    lattice per group) through both CPU backends: pipelined equals the one-stream pass."""
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dt = ml_dtypes.bfloat16
    else:
        dt = np.float32
    c = case(seed=5, V=8, dtype=np.float64)
    c = tuple(x.astype(dt) for x in c[:4]) + c[4:]
    for variant in ({}, dict(variant="tdt", durations=[0, 1, 2], omega=0.3)):
        V = c[2].shape[0] + (3 if variant else 0)
        w = np.concatenate([c[2], c[2][:3]]) if variant else c[2]
        b = np.concatenate([c[3], c[3][:3]]) if variant else c[3]
        args = (c[0], c[1], w, b, c[4] % (V - 3 if variant else V), c[5], c[6])
        for n_rows in (2, 30):
            budget = workspace_bytes(*args[:3], n_rows, topo=None) * (2 if variant else 1)
            outs = []
            for mode in ("off", "on"):
                pipeline(mode)
                outs.append(cutrans.transducer_loss(*args, max_workspace_bytes=budget,
                                                    backend=backend, **variant))
            np.testing.assert_array_equal(np.asarray(outs[1].loss, np.float64),
                                          np.asarray(outs[0].loss, np.float64))
            for got, one, name in zip(outs[1].grads, outs[0].grads, outs[0].grads._fields):
                err, _ = scaled_error(got, one)
                assert err <= PIPELINED_TOL[dtype], (name, variant, n_rows, err)


def test_two_sets_only_where_they_help():
    c = case(B=12, T=3, U=2)
    c[5][:], c[6][:] = 3, 2  # 12 samples of 9 rows
    f = _fused.FusedInputs(c[0], c[1], c[2], c[3], 0, _fused.Topology(), 0.0, 0.0)
    plan = cutrans._plan.make_plan(c[5], c[6])
    state = _fused.one_pass_state(f.topo)
    rows = plan.rows

    def one(budget):
        return _fused.make_schedule(f, plan, budget, False, state, 0)
    big = workspace_bytes(*c[:3], rows)  # one group: nothing to overlap
    assert len(one(big).groups) == 1
    assert _fused.pipelined_schedule(f, plan, big, False, state, 0, one(big)) is None
    # whole samples in one set, split samples in two: no
    fits = workspace_bytes(*c[:3], plan.max_sample_rows + 1)
    assert all(g.resident for g in one(fits).groups) and len(one(fits).groups) > 1
    assert _fused.pipelined_schedule(f, plan, fits, False, state, 0, one(fits)) is None
    # several groups of whole samples either way: two sets, half the rows each
    budget = workspace_bytes(*c[:3], 4 * plan.max_sample_rows)
    assert len(one(budget).groups) == 3
    two = _fused.pipelined_schedule(f, plan, budget, False, state, 0, one(budget))
    assert two is not None and all(g.resident for g in two.groups)
    assert two.chunk_rows <= one(budget).chunk_rows // 2 + 1
    # both sets' workspace fits the budget (the bytes make_workspace allocates)
    ws = _fused.make_workspace(np, f, two, state)
    per_set = ws.h.nbytes + ws.z.nbytes + sum(a.nbytes for a in ws.state.values())
    assert ws.w_aug.nbytes + 2 * per_set <= budget


def test_pipeline_setting_is_checked(pipeline):
    pipeline("sometimes")
    with pytest.raises(ValueError, match=r"CUTRANS_PIPELINE: expected 'on' or 'off', got "
                                         r"'sometimes'"):
        cutrans.transducer_loss(*case())


# ------------------------------------------------------------------ CuPy side stream
class FakeCuda:
    """The parts of ``cupy.cuda`` that CupySide uses, logging each call."""

    def __init__(self, capturing=False):
        self.log, self.capturing, self.device_id = [], capturing, 0
        self.current = self.Stream(self, "main")
        cuda = self

        class Runtime:
            @staticmethod
            def streamIsCapturing(ptr):
                return 1 if cuda.capturing else 0
        self.runtime = Runtime

    def get_current_stream(self):
        return self.current

    def Device(self):
        return types.SimpleNamespace(id=self.device_id)

    class Stream:
        count = 0

        def __init__(self, cuda, name=None, non_blocking=False):
            FakeCuda.Stream.count += 1
            self.cuda, self.ptr = cuda, FakeCuda.Stream.count
            self.name = name or f"side{self.ptr}"
            self.prev = []

        def wait_event(self, ev):
            self.cuda.log.append((self.name, "wait", ev.name))

        def __enter__(self):
            self.prev.append(self.cuda.current)
            self.cuda.current = self
            return self

        def __exit__(self, *exc):
            self.cuda.current = self.prev.pop()

    class Event:
        def __init__(self, cuda, name):
            self.cuda, self.name = cuda, name

        def record(self, stream):
            self.cuda.log.append((stream.name, "record", self.name))


def fake_cupy(cuda):
    names = iter(f"ev{i}" for i in range(100))
    ns = types.SimpleNamespace(
        get_current_stream=cuda.get_current_stream, runtime=cuda.runtime, Device=cuda.Device,
        Stream=lambda non_blocking=False: FakeCuda.Stream(cuda, non_blocking=non_blocking),
        Event=lambda disable_timing=False: FakeCuda.Event(cuda, next(names)))
    return types.SimpleNamespace(cuda=ns)


def test_cupy_side_protocol():
    cuda = FakeCuda()
    side = _side_stream.CupySide(fake_cupy(cuda))
    seen = []
    side.launch(1, lambda: seen.append(cuda.current.name))
    side.wait(1)
    main_done, side_done = side._main_done[1].name, side._side_done[1].name
    s = side.stream.name
    assert seen == [s] and cuda.current.name == "main"
    assert cuda.log == [("main", "record", main_done), (s, "wait", main_done),
                        (s, "record", side_done), ("main", "wait", side_done)]
    assert len({e.name for e in side._main_done + side._side_done}) == 4


def test_cupy_side_per_thread_and_device_none_while_capturing(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(cuda))
    monkeypatch.setattr(_side_stream, "_LOCAL", __import__("threading").local())
    a = _side_stream.cupy_side()
    assert isinstance(a, _side_stream.CupySide) and _side_stream.cupy_side() is a
    cuda.device_id = 1
    b = _side_stream.cupy_side()
    assert b is not a
    import threading
    other = []
    t = threading.Thread(target=lambda: other.append(_side_stream.cupy_side()))
    t.start()
    t.join()
    assert other[0] is not b
    cuda.capturing = True
    assert _side_stream.cupy_side() is None
