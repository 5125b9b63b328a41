"""The ledger's recording: the real orchestration's launches, as KernelBackend launches them."""
import numpy as np
import pytest

import cutrans
from cutrans import _fused, _kernels
from cutrans._plan import make_plan, to_device
from cutrans._topology import Topology
from cutrans.backends.kernel_backend import KernelBackend
from cutrans.backends.numpy_backend import NumpyBackend
from cutrans.ledger import dryrun as dr
from cutrans.ledger import model
from optional_deps import dtype_params
from cutrans.ledger.record import RecordingBackend

V, H = 40, 24
T_LEN = np.array([12, 3, 9, 2, 11, 4])
U_LEN = np.array([5, 1, 4, 0, 5, 2])
KERNEL_KINDS = ("kernel", "lattice")


def _shape():
    return dr.Shape("tiny", T_LEN, U_LEN, V, H, int(T_LEN.max()), int(U_LEN.max()))


def _budget(dtype, rows_per_chunk=30):
    """A budget whose chunks hold ``rows_per_chunk`` rows: samples of 12 x 6 and 9 x 5 rows
    are split, the others resident."""
    f = _fused.FusedInputs(np.empty((6, 12, H), dtype), np.empty((6, 6, H), dtype),
                           np.empty((V, H), dtype), np.empty(V, dtype), 0, Topology(), 0.0, 0.0)
    _, _, Hp, Vp = f.sizes
    s, c = np.dtype(dtype).itemsize, 4
    per_row = (Hp + Vp) * s + _fused._floats(_fused.one_pass_state(Topology())) * c
    fixed = Vp * Hp * s + _fused.fixed_bytes(f, True, True)
    # split groups get 3/4 of the budget for chunks: size it so they hold rows_per_chunk
    return (fixed + rows_per_chunk * per_row) * 4 // 3 + 8


class SpyProvider:
    """Records what KernelBackend launches (grid clamped as ``_Provider.launch`` does)."""

    def __init__(self):
        self.launches = []

    def launch(self, template, types, block, grid, args, *, threads=None, shared_mem=0,
               general=None):
        types = types if isinstance(types, str) else ",".join(types)
        self.launches.append((template, types, max(1, min(int(grid), _kernels.MAX_GRID)),
                              block if threads is None else threads))


class TeeBackend:
    """Computes with the NumPy reference and records what ``KernelBackend`` would launch
    for the very same op calls (a real, numerically correct run)."""

    def __init__(self):
        self.ref, self.xp, self.name = NumpyBackend(), np, "tee"
        self.spy = SpyProvider()
        self.kb = KernelBackend(self.spy, np, "spy", lambda *a, **k: None)
        self.gemms = 0
        for op in ("row_stats", "row_grad", "lattice", "joint_forward", "joint_backward",
                   "check_targets"):
            setattr(self, op, self._tee(op))

    def _tee(self, op):
        def call(*args, **kw):
            getattr(self.kb, op)(*args, **kw)
            return getattr(self.ref, op)(*args, **kw)
        return call

    def gemm(self, *args, **kw):
        self.gemms += 1
        return self.ref.gemm(*args, **kw)

    def prepare_capture(self):
        pass


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    B, T, U = len(T_LEN), int(T_LEN.max()), int(U_LEN.max())
    mk = lambda *s: (rng.standard_normal(s) * 0.5).astype(dtype)  # noqa: E731
    targets = rng.integers(1, V, size=(B, U)).astype(np.int32)
    return (mk(B, T, H), mk(B, U + 1, H), mk(V, H), mk(V), targets,
            T_LEN.astype(np.int32), U_LEN.astype(np.int32))


@pytest.mark.parametrize("dtype", dtype_params("float32", "bfloat16"))
def test_launches_are_those_of_a_real_run(dtype, monkeypatch):
    """The dry run's kernel launches (name, types, grid, block) equal, in order, those
    KernelBackend issues during a real (NumPy-computed) transducer_loss call, with the host
    checks a GPU call makes (the labels' kernel check, ``api.defers_host_checks``)."""
    monkeypatch.setattr(cutrans.api, "defers_host_checks", lambda backend: True)
    dt = np.dtype(cutrans._dtypes.DTYPES[dtype][0])
    budget = _budget(dt)
    tee = TeeBackend()
    out = cutrans.transducer_loss(*_inputs(dt), backend=tee, max_workspace_bytes=budget)
    assert np.isfinite(out.loss)
    run = dr.dry_run(_shape(), dtype, budget=budget)
    rec = [(r.name, r.types, r.grid, r.block) for r in run.launches if r.kind in KERNEL_KINDS]
    assert rec == tee.spy.launches
    assert sum(r.kind == "gemm" for r in run.launches) == tee.gemms
    assert run.schedule["resident_groups"] > 0 and run.schedule["split_chunks"] > 0


@pytest.mark.parametrize("dtype", dtype_params("float32", "bfloat16"))
def test_one_pass_sequence_per_group(dtype):
    """Exactly: per resident group 3 GEMMs, per split chunk 4, and no other ops; grids are
    rows (per block: 256 // threads per row) / frames / label slots / samples, blocks
    256 threads for the row-wise kernels, pick_block(H), lattice_block(longest diagonal)."""
    dt = np.dtype(cutrans._dtypes.DTYPES[dtype][0])
    budget = _budget(dt)
    run = dr.dry_run(_shape(), dtype, budget=budget)
    plan = make_plan(T_LEN, U_LEN)
    enc, pred, w, b, targets = dr._inputs(_shape(), dt)
    f = _fused.FusedInputs(enc, pred, w, b, 0, Topology(), 0.0, 0.0)
    sched = _fused.make_schedule(f, plan, budget, False, _fused.one_pass_state(Topology()),
                                 _fused.fixed_bytes(f, True, True))
    jb = _kernels.JOINT_BACKWARD_BLOCK
    lb = _kernels.lattice_block(to_device(plan, targets, np).max_diag)
    rb = _kernels.ROW_BLOCK

    def rows(template, c, width):
        return (template, _kernels.row_grid(c.n, _kernels.pick_row_threads(width)), rb)

    def fwd(c):
        return [rows("joint_forward", c, H), ("gemm logits", 0, 0), rows("row_stats", c, V)]

    def bwd(c, recompute):
        head = [rows("joint_forward", c, H), ("gemm logits", 0, 0)] if recompute else []
        return head + [rows("row_grad", c, V), ("gemm dW", 0, 0), ("gemm dh", 0, 0),
                       ("joint_backward_enc", c.n_frames, jb),
                       ("joint_backward_pred", c.n_slots, jb)]

    expected = [("check_targets", len(T_LEN), _kernels.pick_block(int(U_LEN.max())))]
    for g in sched.groups:
        for c in g.chunks:
            expected += fwd(c)
        expected.append(("lattice", 2 * (g.b1 - g.b0), lb))  # alpha and beta blocks
        expected.append(("lattice_grad", -(-sched.state_rows // rb), rb))
        for c in g.chunks:
            expected += bwd(c, not g.resident)
    got = [(r.label, r.grid, r.block) for r in run.launches
           if r.kind in KERNEL_KINDS + ("gemm",)]
    assert got == expected
    gemms = sum(r.kind == "gemm" for r in run.launches)
    n_res = sum(g.resident for g in sched.groups)
    n_split = sum(len(g.chunks) for g in sched.groups if not g.resident)
    assert n_res > 0 and n_split > 0
    assert gemms == 3 * n_res + 4 * n_split
    # nothing else: the API's input checks, allocation memsets/fills
    others = {r.kind for r in run.launches} - set(KERNEL_KINDS) - {"gemm"}
    assert others <= {"reduce", "memset", "fill"}


def test_bytes_and_flops():
    """Per-launch bytes and FLOPs follow the record module's formulas (one resident group)."""
    run = dr.dry_run(_shape(), "float32", budget=64 << 20)
    R, s = make_plan(T_LEN, U_LEN).rows, 4
    Hp = -(-(H + 1) // 8) * 8
    by = {}
    for r in run.launches:
        by.setdefault(r.label, []).append(r)
    assert [len(by[k]) for k in ("gemm logits", "gemm dW", "gemm dh")] == [1, 1, 1]
    assert by["gemm logits"][0].flops == 2 * R * Hp * V
    assert by["gemm dW"][0].flops == 2 * R * Hp * V
    assert by["gemm dh"][0].flops == 2 * R * V * H
    assert by["gemm dW"][0].read == (R * V + R * Hp + V * Hp) * s  # accumulates into dW|db
    (rs,) = by["row_stats"]
    assert (rs.read, rs.written) == (R * (V * s + 4), R * 4 * 3)  # lse kept: one read
    (rg,) = by["row_grad"]
    assert (rg.read, rg.written) == (R * (V * s + 12 + 4), R * V * s)
    (lat,) = by["lattice"]
    assert lat.steps == int((T_LEN + U_LEN).max())  # alpha and beta sweeps in parallel
    assert (lat.read, lat.written) == (4 * R * 4, 2 * R * 4 + 6 * 4)
    (lg,) = by["lattice_grad"]
    assert (lg.read, lg.written) == (R * (4 * 4 + 8), 2 * R * 4)
    F, L = int(T_LEN.sum()), int((U_LEN + 1).sum())
    (jf,) = by["joint_forward"]
    assert (jf.read, jf.written) == ((F + L) * H * s, R * H * s)
    (je,) = by["joint_backward_enc"]
    assert (je.grid, je.written) == (F, F * H * s)
    (jp,) = by["joint_backward_pred"]
    assert (jp.grid, jp.written) == (L, L * H * s)
    for rec in run.launches:
        assert model.cost(rec).seconds >= 0


def test_other_paths_record():
    """Two passes (reduction none) recompute every chunk but a single resident one; the
    loss on logits is row_stats, lattice (+ lattice_grad), row_grad."""
    two = dr.dry_run(_shape(), "float32", budget=64 << 20, path="two-pass")
    labels = [r.label for r in two.launches if r.kind != "memset" and r.kind != "fill"]
    assert labels.count("gemm logits") == 1 and labels.count("row_grad") == 1
    logits = dr.dry_run(_shape(), "float32", path="logits")
    assert [r.label for r in logits.launches if r.kind in KERNEL_KINDS] == \
        ["check_targets", "row_stats", "lattice", "lattice_grad", "row_grad"]
    assert not any(r.kind == "gemm" for r in logits.launches)


def test_logits_launches_are_those_of_a_real_run(monkeypatch):
    """The loss on packed logits: the dry run's launches equal those of a real rnnt_loss
    call with a GPU call's host checks (the labels' kernel check first)."""
    monkeypatch.setattr(cutrans.api, "defers_host_checks", lambda backend: True)
    plan = make_plan(T_LEN, U_LEN)
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((plan.rows, V)).astype(np.float32)
    targets = rng.integers(1, V, size=(len(T_LEN), int(U_LEN.max()))).astype(np.int32)
    tee = TeeBackend()
    loss, _ = cutrans.rnnt_loss(logits, targets, T_LEN, U_LEN, layout="packed",
                                return_grad=True, backend=tee)
    assert np.isfinite(loss)
    run = dr.dry_run(_shape(), "float32", path="logits")
    rec = [(r.name, r.types, r.grid, r.block) for r in run.launches if r.kind in KERNEL_KINDS]
    assert rec == tee.spy.launches and rec[0][0] == "check_targets"


def test_recording_backend_writes_only_placeholders():
    be = RecordingBackend()
    plan = make_plan(T_LEN, U_LEN)
    dplan = to_device(plan, np.ones((6, 5), np.int32), np)
    ll = np.full(6, np.nan, np.float32)
    st = np.full(plan.rows, 7.0, np.float32)
    vals = np.full((plan.rows, 2), 7.0, np.float32)
    be.lattice(dplan, Topology(), 1, 4, int(plan.offsets[1]), vals, st, st, ll, vals, True)
    assert np.isnan(ll[[0, 4, 5]]).all() and (ll[1:4] == -1).all()
    assert (st == 7).all() and (vals == 7).all()  # nothing computed
    assert [r.name for r in be.launches] == ["lattice", "lattice_grad"]


def test_gemm_alignment_recorded_and_priced():
    """V=13: the fused op's GEMMs run on padded widths, all recorded as aligned (16-byte
    extents and leading dimensions) and priced at the aligned 16-bit rate; a GEMM on a
    1000-byte extent (V=500 in 16 bits, as runs C/D's) is recorded as not aligned."""
    shape = dr.Shape("odd", T_LEN, U_LEN, 13, H, int(T_LEN.max()), int(U_LEN.max()))
    run = dr.dry_run(shape, "float16", budget=64 << 20)
    gemms = [r for r in run.launches if r.kind == "gemm"]
    assert len(gemms) == 3 and all(r.gemm[6] for r in gemms)
    for r in gemms:
        assert model.cost(r).seconds == pytest.approx(
            max(r.flops / model.ALIGNED_16BIT_RATE, r.bytes / model.BW))
    be = RecordingBackend()
    z = np.zeros((64, 504), np.float16)[:, :500]
    w = np.zeros((500, 512), np.float16)
    be.gemm(z, w, np.zeros((64, 512), np.float16))
    (rec,) = [r for r in be.launches if r.kind == "gemm"]
    assert rec.gemm[6] is False
    assert model.cost(rec).seconds > rec.flops / model.ALIGNED_16BIT_RATE
