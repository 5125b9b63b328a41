"""The fused op's schedule: joint network + output layer + log-softmax + RNN-T, per group.

One schedule for every backend (NumPy, CuPy kernels, CPU-emulated kernels), written against
``backends.base.Backend``. For each chunk of rows (``_plan.Chunk``)::

    h = [act(enc[b,t] + pred[b,u]) | 1 | 0..]       joint_forward   (C, Hp) storage dtype
    z = h @ [W | bias | 0..]^T                      GEMM 1 (the bias rides in the GEMM)
    per-row values (, logsumexps) of the topology   row_stats (one read of z)
  per group: alpha, beta, coefficients, LL           lattice
    z <- dLoss/dz in place                          row_grad (one read of z with lse)
    [dW | db] += z^T @ h                            GEMM 2, accumulating (beta = 1)
    dh = z @ W  (over h's first H columns)          GEMM 3
    d_enc, d_pred <- dh * act'(...)                 joint_backward (act' recomputed)

Nothing else runs per chunk: no reductions or elementwise passes besides these.

The GEMMs run on the padded widths ``Hp = round8(H + 1)`` and ``Vp = round8(V)`` (GEMM 3
writes dh's H columns only: h's bias and zero columns are written once per workspace), so
every extent and leading dimension is a multiple of 8 elements when H is (16 bytes for
16-bit storage: the alignment cuBLAS's fast tensor-core kernels need; V=500 is not).
``W_aug``'s rows V..Vp are zero, so z's columns V..Vp are zero after GEMM 1; the row kernels
read and write only the V logits, so dz's padding stays zero and adds nothing to dW (rows
V..Vp) or dh.

Two paths:

* **one pass** (``one_pass``): the upstream gradient is the same scalar for every sample
  (reduction "mean"/"sum", the usual training case). Each group goes forward, through its
  lattice and backward while its logits are still in the workspace (three GEMMs); split
  groups recompute their chunks (four GEMMs). Nothing of size O(rows) outlives a group.
  **Pipelined** (``PIPELINE = "on"``, environment ``CUTRANS_PIPELINE=on``; off by default
  until a GPU measures it): two workspace sets of half the budget; group g's lattice runs on
  a side stream (``backends._side_stream``) while the main stream computes group g + 1's
  logits and group g - 1's gradients. Same math per group, same order of the gradient
  sums; used when the one-set schedule has several groups and two sets recompute no more.
* **two passes** (``forward`` + ``backward``): a per-sample upstream gradient, known only
  later. The forward keeps 2 floats per row (the gradient coefficients); the backward
  recomputes every chunk (or reuses the one resident chunk).

Precision: h and z are stored in the input dtype; GEMMs accumulate in float32 (float64);
row statistics, lattice and gradient math in the compute dtype; dW accumulates in the
compute dtype across chunks; d_enc/d_pred are summed in the compute dtype and rounded once
into the input dtype (float32 accumulators only for a sample split across chunks).

Workspace (``max_workspace_bytes``): per chunk row ``(Hp + Vp)`` storage elements (h, z)
plus the per-row state of the group (one pass: 5 floats; two passes: 2 floats for alpha and
beta), plus fixed ``Vp x Hp`` storage (W with bias) and compute-dtype (dW with db) buffers,
and float32 accumulators of one sample for 16-bit inputs. When a sample exceeds a chunk,
a quarter of the budget holds the state of split groups (at least one sample's lattice).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _status
from . import _validate as v
from ._dtypes import compute_dtype
from ._plan import Chunk, DevicePlan, Group, RowPlan, rows_per_chunk, to_device
from ._topology import Topology
from .backends.base import RowLayout



#: "on": the one pass runs the lattices on a side stream, two workspace sets (see the module
#: docstring); "off": one stream, one set.
PIPELINE = os.environ.get("CUTRANS_PIPELINE", "off")


def one_pass_state(topo) -> dict:
    """Per-row state of a one-pass group: name -> columns (0: a vector)."""
    state = {"values": topo.width, "lse": topo.lse_width, "alpha": 0, "beta": 0}
    if topo.omega:
        state["coefs2"] = 2  # TDT's mixed-in RNN-T
    return state


TWO_PASS_STATE = {"alpha": 0, "beta": 0}


def _floats(state: dict) -> int:
    return sum(max(1, w) for w in state.values())


def round8(n: int) -> int:
    """``n`` rounded up to a multiple of 8: the GEMMs' widths (module docstring)."""
    return -(-n // 8) * 8


@dataclass(frozen=True)
class FusedInputs:
    """Contiguous inputs (one storage dtype) and the op's scalars."""

    enc: Any  # (B, T, H)
    pred: Any  # (B, U + 1, H)
    weight: Any  # (V, H)
    bias: Any  # (V,)
    activation: int
    topo: Topology
    fastemit_lambda: float
    clamp: float
    tf32: bool = False

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """(H, V, Hp, Vp): hidden size, logits per row (TDT: tokens and durations), and their
    padded workspace widths."""
        H, V = int(self.enc.shape[-1]), int(self.weight.shape[0])
        return H, V, round8(H + 1), round8(V)


@dataclass
class Workspace:
    """Chunk buffers: ``h`` (C, Hp) = [h | 1 | 0] (then dh in its first H columns),
    ``z`` (C, Vp) logits then their gradient, ``w_aug`` (Vp, Hp) = [W | bias | 0] (rows
    V..Vp zero); the group state (S,) or (S, columns) per name; ``layout`` addresses z's
    rows."""

    h: Any
    z: Any
    w_aug: Any
    layout: RowLayout
    state: dict


@dataclass(frozen=True)
class Schedule:
    groups: tuple[Group, ...]
    chunk_rows: int  # rows of the largest chunk
    state_rows: int  # rows of the largest group (its per-row state)


def make_schedule(f: FusedInputs, plan: RowPlan, budget: int, sample_wise: bool,
                  state: dict, fixed_extra: int, sets: int = 1) -> Schedule:
    """Groups and chunks whose workspace fits ``budget`` bytes (see the module docstring)
    ``sets`` times (the pipelined one pass: 2)."""
    per_row, fixed, state_row = workspace_rule(f, state, fixed_extra, sets)
    rows = rows_per_chunk(budget, per_row, fixed, plan.rows)
    state_rows = rows
    if plan.max_sample_rows > rows:  # split groups: a quarter of the budget for their state
        rows = max(1, min(rows, (budget - budget // 4 - fixed) // per_row))
        state_rows = max(rows, (budget // 4) // state_row)
    groups = tuple(plan.schedule(rows, state_rows, sample_wise))
    return Schedule(groups, max((c.n for g in groups for c in g.chunks), default=1),
                    max((g.rows for g in groups), default=1))


def workspace_rule(f: FusedInputs, state: dict, fixed_extra: int,
                   sets: int = 1) -> tuple[int, int, int]:
    """``(bytes per chunk row, fixed bytes, state bytes per row)`` of a workspace with
    ``state`` per row and ``sets`` sets (module docstring): h and z rows in the storage
    dtype, the state in the compute dtype, W_aug plus ``fixed_extra``."""
    _, _, Hp, Vp = f.sizes
    s = np.dtype(f.enc.dtype).itemsize
    c = np.dtype(compute_dtype(f.enc.dtype)).itemsize
    state_row = max(1, _floats(state)) * c * sets
    return (Hp + Vp) * s * sets + state_row, Vp * Hp * s + fixed_extra, state_row


def workspace_bytes(enc, pred, weight, rows_per_chunk: int = 1, topo=None) -> int:
    """A ``max_workspace_bytes`` whose chunks hold ``rows_per_chunk`` rows on every path
    (one row: the smallest legal budget) for ``topo`` (default: the standard RNN-T).
    Arrays or anything with ``shape``/``dtype``."""
    topo = topo or Topology()
    f = FusedInputs(enc, pred, weight, None, 0, topo, 0.0, 0.0)
    per_row, fixed, _ = workspace_rule(f, one_pass_state(topo), fixed_bytes(f, True, True))
    return rows_per_chunk * per_row + fixed


def check_least_workspace(budget: int, enc, pred, weight) -> None:
    """ValueError when ``budget`` cannot hold one row on any path (the two-pass state, no
    gradient buffers): what adapters that run the op later (JAX) check at the call. Each
    path still checks its own, larger minimum when it runs."""
    f = FusedInputs(enc, pred, weight, None, 0, Topology(), 0.0, 0.0)
    per_row, fixed, _ = workspace_rule(f, TWO_PASS_STATE, 0)
    least = per_row + fixed
    if budget < least:
        raise ValueError(f"max_workspace_bytes={budget} is too small: one row of the lattice "
                         f"needs at least {least} bytes of workspace")


def fixed_bytes(f: FusedInputs, need_w: bool, need_h: bool) -> int:
    """Bytes of the backward's fixed buffers: dW|db accumulator, split-sample accumulators."""
    H, _, Hp, Vp = f.sizes
    c = np.dtype(compute_dtype(f.enc.dtype)).itemsize
    n = Vp * Hp * c if need_w else 0
    if need_h and np.dtype(f.enc.dtype).itemsize == 2:
        n += (f.enc.shape[1] + f.pred.shape[1]) * H * 4
    return n


def make_workspace(xp, f: FusedInputs, sched: Schedule, state: dict, w_aug=None) -> Workspace:
    """A chunk workspace for ``sched``; ``w_aug``: another set's (read-only) to share."""
    H, V, Hp, Vp = f.sizes
    sdt, cdt = f.enc.dtype, compute_dtype(f.enc.dtype)
    if w_aug is None:
        w_aug = xp.zeros((Vp, Hp), dtype=sdt)
        w_aug[:V, :H] = f.weight
        w_aug[:V, H] = f.bias
    h = xp.empty((sched.chunk_rows, Hp), dtype=sdt)
    h[:, H] = 1
    h[:, H + 1:] = 0
    z = xp.empty((sched.chunk_rows, Vp), dtype=sdt)
    arrays = {name: xp.empty((sched.state_rows, w) if w else sched.state_rows, dtype=cdt)
              for name, w in state.items()}
    return Workspace(h, z, w_aug, RowLayout(packed=True, ld=Vp, vocab=V), arrays)


# ------------------------------------------------------------------ per chunk
def chunk_logits(be, f: FusedInputs, ws: Workspace, dplan: DevicePlan, c: Chunk) -> None:
    """h and z = h W_aug^T of the chunk's rows (joint_forward + GEMM 1)."""
    h = ws.h[:c.n]
    be.joint_forward(f.enc, f.pred, dplan, c.row0, c.n, f.activation, h)
    be.gemm(h, ws.w_aug.T, ws.z[:c.n], tf32=f.tf32)


class GradSink:
    """The gradients being built, and where each chunk's joint backward writes.

    ``d_enc``/``d_pred`` (input dtype, zero outside the lattices); ``d_w`` = [dW | db | 0]
    (Vp, Hp; rows V..Vp stay zero) accumulated by GEMM 2 in the compute dtype. A chunk of
    whole samples writes its rows of d_enc/d_pred directly; chunks of a split sample accumulate, into d_enc/d_pred
    for float32/float64, or into float32 accumulators of that sample for 16-bit inputs
    (copied into the gradients after its last chunk).
    """

    def __init__(self, xp, f: FusedInputs, needs):
        self.xp, self.f = xp, f
        self.need_enc, self.need_pred, need_w, need_b = map(bool, needs)
        H, _, Hp, Vp = f.sizes
        sdt, cdt = f.enc.dtype, compute_dtype(f.enc.dtype)
        self.d_enc = xp.zeros(f.enc.shape, dtype=sdt) if self.need_enc else None
        self.d_pred = xp.zeros(f.pred.shape, dtype=sdt) if self.need_pred else None
        self.d_w = xp.zeros((Vp, Hp), dtype=cdt) if need_w or need_b else None
        self.needs = (self.need_enc, self.need_pred, need_w, need_b)
        self.direct = np.dtype(sdt) == np.dtype(cdt)
        self.acc = None
        if not self.direct and (self.need_enc or self.need_pred):
            self.acc = (xp.empty((1,) + tuple(f.enc.shape[1:]), dtype=np.float32),
                        xp.empty((1,) + tuple(f.pred.shape[1:]), dtype=np.float32))

    @property
    def need_h(self) -> bool:
        return self.need_enc or self.need_pred

    def targets(self, c: Chunk):
        """``(d_enc, d_pred, out_b0, accumulate)`` for the joint backward of chunk ``c``."""
        if not c.split:
            return self.d_enc, self.d_pred, 0, False
        if self.direct:
            return self.d_enc, self.d_pred, 0, True
        if c.first:
            for a in self.acc:
                a[...] = 0
        de, dp = self.acc
        return (de if self.need_enc else None, dp if self.need_pred else None, c.b0, True)

    def chunk_done(self, c: Chunk) -> None:
        if c.split and c.last and not self.direct:
            if self.need_enc:
                self.d_enc[c.b0] = self.acc[0][0]
            if self.need_pred:
                self.d_pred[c.b0] = self.acc[1][0]

    def finish(self, w_scale: float = 1.0):
        """(d_enc, d_pred, d_weight, d_bias) in the input dtype (None where not needed);
        ``w_scale`` multiplies dW/db in the compute dtype, before their rounding."""
        H, V = self.f.sizes[:2]
        need_w, need_b = self.needs[2:]
        if self.d_w is not None and w_scale != 1:
            self.d_w *= w_scale  # in place: the sink ends here
        d_w = self.d_w[:V, :H].astype(self.f.weight.dtype) if need_w else None
        d_b = self.d_w[:V, H].astype(self.f.bias.dtype) if need_b else None
        return self.d_enc, self.d_pred, d_w, d_b


def chunk_backward(be, f: FusedInputs, ws: Workspace, dplan: DevicePlan, c: Chunk, coefs,
                   coefs2, rbase: int, lse, scale, sink: GradSink) -> None:
    """row_grad in place over z, GEMM 2 into [dW | db], GEMM 3 into dh, joint backward."""
    H = f.sizes[0]
    dz, h = ws.z[:c.n], ws.h[:c.n]  # dz: z's padding columns stay zero (module docstring)
    be.row_grad(dz, dz, ws.layout, c.row0, c.n, dplan, f.topo, coefs, scale,
                f.fastemit_lambda, f.clamp, rbase, lse, coefs2)
    if sink.d_w is not None:
        be.gemm(dz.T, h, sink.d_w, accumulate=True, tf32=f.tf32)
    if sink.need_h:
        be.gemm(dz, ws.w_aug[:, :H], h[:, :H], tf32=f.tf32)  # dh over h: h is done
        d_enc, d_pred, b0, acc = sink.targets(c)
        be.joint_backward(h, f.enc, f.pred, dplan, c, f.activation, d_enc, d_pred, b0, acc)
        sink.chunk_done(c)


def losses_from(log_like, fastemit_lambda: float, topo=None, log_like2=None):
    """Per-sample losses; NeMo / warprnnt-numba convention: (1 + lambda) * (-LL); TDT with
    omega: (1 - omega) (-LL) + omega (-LL of the mixed-in RNN-T)."""
    if topo is not None and topo.omega:
        return log_like * -(1.0 - topo.omega) - log_like2 * topo.omega
    return log_like * (-(1.0 + fastemit_lambda))


def run_lattices(be, topo, dplan, b0, b1, rbase, values, alpha, beta, need_grad, coefs2=None,
                 log_like=None, log_like2=None):
    """The lattice(s) of samples ``[b0, b1)``; returns ``(log_like, coefs2, log_like2)``.

    TDT with omega first runs the mixed-in RNN-T on the token values (columns 0, 1) into
    ``coefs2`` (rows, 2) and ``log_like2``; then the topology's lattice turns ``values`` into
    its coefficients in place. ``log_like``/``log_like2``: (B,) arrays to fill (allocated
    if None)."""
    xp = be.xp
    if log_like is None:
        log_like = xp.empty(dplan.batch, dtype=values.dtype)
    if topo.omega:
        if log_like2 is None:
            log_like2 = xp.empty(dplan.batch, dtype=values.dtype)
        be.lattice(dplan, topo.rnnt_part(), b0, b1, rbase, values, alpha, beta, log_like2,
                   coefs2, need_grad)
    be.lattice(dplan, topo, b0, b1, rbase, values, alpha, beta, log_like, values, need_grad)
    return log_like, coefs2, log_like2


def check_fused_log_likelihood(log_like, xp, status=None) -> None:
    """Finite inputs give finite logits unless a 16-bit GEMM overflows: one host check, or
    a flag ORed into the device ``status`` (``checks="device"``; the deferred host checks
    of a device call, ``api._run_checked``)."""
    if status is not None:
        _status.flag_non_finite(status, log_like, xp)
        return
    if not v.host_true(xp.isfinite(log_like).all()):
        b = int(v.host_read(xp.flatnonzero(~xp.isfinite(log_like))[0]))
        raise ValueError(f"the joint logits of sample {b} are not finite (a float16 GEMM "
                         f"overflow, |z| > 65504?); use bfloat16 or float32 inputs")


def device_checks(be, f: FusedInputs, dplan: DevicePlan, status) -> None:
    """The labels flagged into ``status`` by a kernel (``checks="device"``, and the
    deferred host checks of a device call: ``api._run_checked``)."""
    be.check_targets(dplan, f.topo.vocab(f.sizes[1]), f.topo, status)


# ------------------------------------------------------------------ one pass
def pipeline_side(be, pipeline: bool | None = None):
    """The side stream of a pipelined one pass, or None; ``pipeline``: None follows
    ``PIPELINE``."""
    if PIPELINE not in ("on", "off"):
        raise ValueError(f"CUTRANS_PIPELINE: expected 'on' or 'off', got {PIPELINE!r}")
    on = PIPELINE == "on" if pipeline is None else bool(pipeline)
    side_stream = getattr(be, "side_stream", None)
    return side_stream() if on and side_stream is not None else None


def pipelined_schedule(f: FusedInputs, plan: RowPlan, budget: int, sample_wise: bool,
                       state: dict, fixed: int, one_set: Schedule) -> Schedule | None:
    """The two-set schedule, if it is worth it: ``one_set`` has several groups (one lattice
    to hide behind another group's work at least) and two sets split no sample that one set
    keeps whole (a recomputed chunk costs a GEMM more than a lattice)."""
    if len(one_set.groups) < 2:
        return None
    try:
        two = make_schedule(f, plan, budget, sample_wise, state, fixed, sets=2)
    except ValueError:  # half the budget holds no row
        return None
    if all(g.resident for g in one_set.groups) and not all(g.resident for g in two.groups):
        return None
    return two


def one_pass_schedule(f: FusedInputs, plan: RowPlan, budget: int, sample_wise: bool,
                      fixed: int, pipelined: bool) -> tuple[Schedule, bool]:
    """The one pass's schedule, and whether it takes two workspace sets (``pipelined``: a
    side stream is there; ``pipelined_schedule`` decides)."""
    state = one_pass_state(f.topo)
    one = make_schedule(f, plan, budget, sample_wise, state, fixed)
    two = pipelined_schedule(f, plan, budget, sample_wise, state, fixed, one) \
        if pipelined else None
    return (one, False) if two is None else (two, True)


class _OnePass:
    """One pass's three stages per group, on a workspace set: ``forward`` (logits and row
    statistics of every chunk), ``lattice``, ``backward`` (gradients; split groups
    recompute their chunks' logits, whose kept logsumexps still hold)."""

    def __init__(self, be, f: FusedInputs, dplan: DevicePlan, up, sink: GradSink, log_like,
                 log_like2):
        self.be, self.f, self.dplan, self.up, self.sink = be, f, dplan, up, sink
        self.log_like, self.log_like2 = log_like, log_like2

    def forward(self, g: Group, ws: Workspace) -> None:
        st = ws.state
        for c in g.chunks:
            chunk_logits(self.be, self.f, ws, self.dplan, c)
            self.be.row_stats(ws.z[:c.n], ws.layout, c.row0, c.n, self.dplan, self.f.topo,
                              st["values"], g.row0, st["lse"])

    def lattice(self, g: Group, ws: Workspace) -> None:
        st = ws.state
        run_lattices(self.be, self.f.topo, self.dplan, g.b0, g.b1, g.row0, st["values"],
                     st["alpha"], st["beta"], True, st.get("coefs2"), self.log_like,
                     self.log_like2)

    def backward(self, g: Group, ws: Workspace) -> None:
        st = ws.state
        for c in g.chunks:
            if not g.resident:
                chunk_logits(self.be, self.f, ws, self.dplan, c)
            chunk_backward(self.be, self.f, ws, self.dplan, c, st["values"], st.get("coefs2"),
                           g.row0, st["lse"], self.up, self.sink)


def one_pass(be, f: FusedInputs, targets, plan: RowPlan, *, scale: float, needs,
             max_workspace_bytes: int, sample_wise: bool, status=None,
             pipeline: bool | None = None, log_like=None, w_scale: float = 1.0):
    """Per-sample losses (B,) and the gradients of ``scale * sum_b loss_b`` (see
    ``GradSink.finish``; dW/db times ``w_scale`` too, before their rounding into the input
    dtype), in one pass over the groups (pipelined: see the module docstring;
    ``pipeline`` None follows ``PIPELINE``). ``status``: device-side checks
    (``cutrans._status``) instead of host ones; ``log_like``: a (B,) compute-dtype array
    to fill with the log-likelihoods (else allocated)."""
    xp = be.xp
    topo = f.topo
    dplan = to_device(plan, targets, xp)
    if status is not None:
        device_checks(be, f, dplan, status)
    sink = GradSink(xp, f, needs)
    state = one_pass_state(topo)
    side = pipeline_side(be, pipeline)
    sched, two = one_pass_schedule(f, plan, max_workspace_bytes, sample_wise,
                                   fixed_bytes(f, sink.d_w is not None, sink.need_h),
                                   side is not None)
    sets = [make_workspace(xp, f, sched, state)]
    if two:
        sets.append(make_workspace(xp, f, sched, state, w_aug=sets[0].w_aug))
    cdt = compute_dtype(f.enc.dtype)
    log_like = xp.empty(plan.batch, dtype=cdt) if log_like is None else log_like
    log_like2 = xp.empty(plan.batch, dtype=cdt) if topo.omega else None
    run = _OnePass(be, f, dplan, xp.full(plan.batch, scale, dtype=cdt), sink, log_like,
                   log_like2)
    if not two:
        for g in sched.groups:
            run.forward(g, sets[0])
            run.lattice(g, sets[0])
            run.backward(g, sets[0])
    else:  # main: F0 F1 B0 F2 B1 ...; side: L0 L1 L2 ... (Lg after Fg, Bg after Lg)
        for i, g in enumerate(sched.groups):
            ws = sets[i % 2]
            run.forward(g, ws)
            side.launch(i % 2, lambda: run.lattice(g, ws))
            if i:
                side.wait((i - 1) % 2)
                run.backward(sched.groups[i - 1], sets[(i - 1) % 2])
        last = len(sched.groups) - 1
        side.wait(last % 2)
        run.backward(sched.groups[last], sets[last % 2])
    check_fused_log_likelihood(log_like, xp, status)
    return losses_from(log_like, f.fastemit_lambda, topo, log_like2), sink.finish(w_scale)


# ------------------------------------------------------------------ two passes
@dataclass
class FusedContext:
    """What the two-pass forward keeps for its backward: the gradient coefficients (a few
    floats per row), the schedule, and the inputs; one resident chunk's workspace."""

    backend: Any
    plan: RowPlan
    dplan: DevicePlan
    coefs: Any  # (R, W) compute dtype
    coefs2: Any  # (R, 2): TDT's mixed-in RNN-T (omega > 0), else None
    inputs: FusedInputs
    schedule: Schedule
    resident: Workspace | None = None
    io: Any = None  # the caller's array boundary (cutrans._arrays), set by the API


def fused_context(be, f: FusedInputs, targets, plan: RowPlan, coefs, coefs2, *,
                  max_workspace_bytes: int, sample_wise: bool,
                  dplan: DevicePlan | None = None) -> FusedContext:
    """The two-pass context (used by the forward, and by adapters that rebuild it from
    inputs and saved coefficients). The schedule leaves room for the backward's buffers."""
    sched = make_schedule(f, plan, max_workspace_bytes, sample_wise, TWO_PASS_STATE,
                          fixed_bytes(f, True, True))
    return FusedContext(be, plan, dplan or to_device(plan, targets, be.xp), coefs, coefs2, f,
                        sched)


def forward(be, f: FusedInputs, targets, plan: RowPlan, *, need_grad: bool,
            max_workspace_bytes: int, sample_wise: bool, status=None, log_like=None):
    """Per-sample losses (B,) and (if ``need_grad``) the context for ``backward``.
    ``status``, ``log_like``: as in ``one_pass``."""
    xp = be.xp
    topo = f.topo
    cdt = compute_dtype(f.enc.dtype)
    two = topo.omega != 0.0
    if need_grad:
        ctx = fused_context(be, f, targets, plan, xp.empty((plan.rows, topo.width), dtype=cdt),
                            xp.empty((plan.rows, 2), dtype=cdt) if two else None,
                            max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise)
        sched, dplan, state = ctx.schedule, ctx.dplan, TWO_PASS_STATE
    else:
        ctx, dplan = None, to_device(plan, targets, xp)
        state = {"values": topo.width, "alpha": 0, **({"coefs2": 2} if two else {})}
        sched = make_schedule(f, plan, max_workspace_bytes, sample_wise, state, 0)
    if status is not None:
        device_checks(be, f, dplan, status)
    ws = make_workspace(xp, f, sched, state)
    log_like = xp.empty(plan.batch, dtype=cdt) if log_like is None else log_like
    log_like2 = xp.empty(plan.batch, dtype=cdt) if two else None
    for g in sched.groups:
        if need_grad:  # the coefficients overwrite the values, kept per row
            values = ctx.coefs[g.row0:g.row1]
            coefs2 = ctx.coefs2[g.row0:g.row1] if two else None
        else:
            values, coefs2 = ws.state["values"], ws.state.get("coefs2")
        for c in g.chunks:
            chunk_logits(be, f, ws, dplan, c)
            be.row_stats(ws.z[:c.n], ws.layout, c.row0, c.n, dplan, topo, values, g.row0)
        alpha = ws.state["alpha"]
        beta = ws.state["beta"] if need_grad else alpha
        run_lattices(be, topo, dplan, g.b0, g.b1, g.row0, values, alpha, beta, need_grad,
                     coefs2, log_like, log_like2)
    check_fused_log_likelihood(log_like, xp, status)
    if need_grad and len(sched.groups) == 1 and sched.groups[0].resident:
        ctx.resident = ws  # its logits are still in z: the backward need not recompute
    return losses_from(log_like, f.fastemit_lambda, topo, log_like2), ctx


def backward(ctx: FusedContext, grad_losses, needs=(True, True, True, True)):
    """(d_enc, d_pred, d_weight, d_bias) for upstream per-sample gradients (B,);
    ``needs`` flags which to compute (the others come back as None)."""
    be, f = ctx.backend, ctx.inputs
    xp = be.xp
    scale = v.upstream_gradient(grad_losses, ctx.plan.batch, xp, ctx.coefs.dtype)
    sink = GradSink(xp, f, needs)
    if not any(sink.needs):
        return None, None, None, None
    resident, ctx.resident = ctx.resident, None  # z becomes the gradient: recompute next time
    ws = resident or make_workspace(xp, f, ctx.schedule, {})
    for g in ctx.schedule.groups:
        for c in g.chunks:
            if resident is None:
                chunk_logits(be, f, ws, ctx.dplan, c)
            chunk_backward(be, f, ws, ctx.dplan, c, ctx.coefs, ctx.coefs2, 0, None, scale,
                           sink)
    return sink.finish()
