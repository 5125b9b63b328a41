"""Emulated kernels vs the NumPy backend, op by op (see kops.py for what each check does)."""
import pytest

from kcases import COMPUTE, STORAGE, TOPOLOGIES, Case
from kops import (check_joint_backward, check_joint_forward, check_lattice, check_row_grad,
                  check_row_stats)

# (seed, B, T_max, U_max, V): V picks the block size (32 / 128 / 256 threads per row)
ROW_CASES = [(0, 4, 5, 3, 5), (1, 3, 4, 4, 150), (2, 2, 3, 2, 600)]
#: (shape, topology): every shape with the standard RNN-T (lean row kernels), the first two
#: with every other topology (the general row kernels: several blanks, duration logits,
#: sigma, delay penalty)
#: rows of more than 8192 logits take a whole block each (cross-warp reductions)
BLOCK_ROWS = (3, 2, 3, 2, 8500)
ROW_TOPO = [(s, "rnnt") for s in ROW_CASES] + [(s, t) for s in ROW_CASES[:2] for t in TOPOLOGIES
                                               if t != "rnnt"] + [
    (BLOCK_ROWS, t) for t in ("rnnt", "multiblank", "tdt-omega")]


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("shape,topo", ROW_TOPO)
def test_row_stats(emu, err_stats, shape, topo, dtype, layout):
    case = Case(*shape, topo=topo)
    for chunks in case.chunkings():
        check_row_stats(emu, case, dtype, layout, chunks, err_stats)
    chunks = case.chunkings()[-1]
    check_row_stats(emu, case, dtype, layout, chunks, err_stats, rbase=chunks[-1][0])


#: (topology, (fastemit_lambda, clamp)): the options alone with the standard topology, off
#: and together with every other one
GRAD_OPTS = [("rnnt", o) for o in [(0.0, 0.0), (0.3, 0.0), (0.0, 0.05), (0.2, 0.1)]] + [
    (t, o) for t in TOPOLOGIES if t != "rnnt" for o in [(0.0, 0.0), (0.2, 0.1)]]


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("topo,opts", GRAD_OPTS)
def test_row_grad(emu, err_stats, topo, opts, dtype, layout, in_place):
    for shape in ROW_CASES[:2] + [BLOCK_ROWS]:
        case = Case(*shape, topo=topo)
        for i, chunks in enumerate(case.chunkings()[1:3]):
            check_row_grad(emu, case, dtype, layout, chunks, in_place=in_place,
                           fastemit=opts[0], clamp=opts[1], stats=err_stats, with_lse=i == 1)


@pytest.mark.parametrize("need_grad,alias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("dtype", COMPUTE)
@pytest.mark.parametrize("shape", [(0, 5, 6, 4, 6), (1, 3, 80, 40, 5), (2, 1, 1, 0, 5)])
@pytest.mark.parametrize("topo", list(TOPOLOGIES))
def test_lattice(emu, err_stats, topo, shape, dtype, need_grad, alias):
    check_lattice(emu, Case(*shape, topo=topo), dtype, need_grad, alias, err_stats)


@pytest.mark.parametrize("need_grad", [True, False])
@pytest.mark.parametrize("dtype", COMPUTE)
def test_lattice_diagonals_in_workspace(emu, monkeypatch, err_stats, dtype, need_grad):
    """Samples whose diagonals exceed the shared-memory buffers (here: shrunk to 3 cells)
    keep them in their workspace rows; others in the same launch use shared memory."""
    from cutrans import _kernels
    monkeypatch.setattr(_kernels, "LATTICE_SHARED_BYTES", 3 * 2 * 8)
    case = Case(1, 6, 9, 7, 5)
    assert case.plan.logit_len.min() == 1 and max(
        min(t, u + 1) for t, u in zip(case.T, case.U)) > 3
    check_lattice(emu, case, dtype, need_grad, need_grad, err_stats)


@pytest.mark.parametrize("activation", [0, 1, 2])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("H", [16, 200])
def test_joint_forward(emu, err_stats, H, dtype, activation):
    case = Case(4, 4, 5, 3, 5)
    for chunks in case.chunkings()[1:]:
        check_joint_forward(emu, case, dtype, H, activation, chunks, err_stats)


@pytest.mark.parametrize("activation", [0, 1, 2])
@pytest.mark.parametrize("out", ["same", "float32"])
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("H, ldh", [(16, 18), (200, 202), (16, 24), (200, 208), (20, 24)])
def test_joint_backward(emu, err_stats, H, ldh, dtype, out, activation):
    """Outputs in the storage dtype, or float32 accumulators (16-bit storage only). ``dh``
    rows off the 16-byte grid (ldh = H + 2) take the per-element path; ldh and H multiples
    of a word's elements (4 float32, 8 16-bit; H = 20: float32 only) the word path."""
    if out == "float32" and dtype not in ("float16", "bfloat16"):
        pytest.skip("float32 accumulators exist for 16-bit storage only")
    case = Case(5, 4, 5, 3, 5)
    for chunks in case.chunkings():
        check_joint_backward(emu, case, dtype, H, activation, chunks, err_stats, out, ldh)


@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("H, ldh", [(16, 24), (200, 208), (600, 608), (200, 202)])
def test_joint_backward_long_sums(emu, err_stats, H, ldh, dtype):
    """Sums over tens of rows per output (T, U up to 45, 37), split between the block's
    groups of threads (256 threads: 8 groups of 32 lanes at H = 16, 1 group of 256 at
    H = 600 float32), each with several rounds of four rows in flight and a remainder;
    the per-element path (ldh = H + 2) too."""
    case = Case(7, 3, 45, 37, 5)
    assert case.plan.logit_len.max() > 30 and case.plan.target_len.max() > 30
    for chunks in case.chunkings():
        check_joint_backward(emu, case, dtype, H, 0, chunks, err_stats, "same", ldh)


@pytest.mark.parametrize("dtype", COMPUTE)
def test_lattice_long(emu, dtype):
    """T = 4000, U = 1000 (4M lattice points, diagonals longer than the block): one sample."""
    import numpy as np
    from cutrans._plan import make_plan
    from kcases import REF, assert_close, cdt
    from kops import run_lattice
    T, U = 4000, 1000
    case = Case(0, 1, 2, 1, 3)
    case.T[:], case.U[:] = T, U
    case.targets = np.ones((1, U), np.int32)
    case.plan = make_plan(case.T, case.U)
    case.R = case.plan.rows
    lp = np.log(np.random.default_rng(0).dirichlet(np.ones(3), case.R)).astype(cdt(dtype))
    values = np.ascontiguousarray(lp[:, :2])
    values[U::U + 1, 1] = -np.inf
    exp = run_lattice(REF, case, values, True, False)
    got = run_lattice(emu, case, values, True, True)
    for name, k in (("alpha", 0), ("log_like", 1), ("coefs", 2)):
        assert_close(got[k], exp[k], dtype, f"lattice {name}")
