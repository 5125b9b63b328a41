"""The recording backend: what a call would launch on a GPU, without computing anything.

``RecordingBackend`` is ``backends.kernel_backend.KernelBackend`` itself (same ops, same
block choices (``_kernels.pick_block``, ``lattice_block``, ``JOINT_BACKWARD_BLOCK``), same
grid sizes: rows, ``chunk.n_frames``, ``chunk.n_slots``, samples; grids clamped to
``_kernels.MAX_GRID`` as ``_Provider.launch`` does) over a ``RecordingProvider`` that
records each launch instead of running it, on NumPy arrays (``xp`` = numpy). Each op then
annotates its launch(es) with the bytes the kernel must move between HBM and the SMs and,
for GEMMs, the FLOPs. Nothing is computed; the only writes are placeholders where the
orchestration later reads values:

* ``lattice``: ``log_like[b0:b1] = -1`` (a finiteness check passes).

Array allocations through ``xp`` (``zeros``/``zeros_like``/``full``: device memsets and
fills on a GPU) are recorded too (``RecordingXP``). Element assignments into workspaces
(``w_aug[:V, :H] = weight``, ``h[:, H] = 1``: once per call, O(workspace)) are not.

Bytes per launch (``s``: storage itemsize, ``c``: compute itemsize, ``o``: the joint
backward's output itemsize; ``n`` rows, ``F`` frames and ``L`` label slots of the chunk)::

    row_stats         read n*V*s + 4n (label)           write n*c*(W + [G lse])
    row_grad          read n*V*s*(1 + [no lse]) + n*c*(W + [G] + [2 omega]) + 4n
                      write n*V*s
    joint_forward     read (F + L)*H*s                   write n*H*s
    joint_backward_enc   read n*H*s + (F + L)*H*s + [acc] F*H*o    write F*H*o
    joint_backward_pred  read n*H*s + (F + L)*H*s + [acc] L*H*o    write L*H*o
    lattice (rows R)  alpha (+ beta) sweep(s): read 2*R*c each, write R*c each (+ B*c)
    lattice_grad      read R*(c*(W + 2) + 8), write W*R*c  (W = 2 values per row)
    lattice_arcs      need_grad: read (2W+4)*R*c, write (W+2)*R*c (+ B*c); else read W*R*c,
                      write R*c   (W values per row of the topology)
    gemm (m,k)@(k,n)  read m*k*s_a + k*n*s_b (+ m*n*s_out if accumulate)   write m*n*s_out
                      FLOPs 2*m*n*k

DRAM traffic only: enc rows are read once per frame and pred rows once per label slot
(the rows of one sample's lattice are consecutive, so reuse hits L2); the per-row
binary search over ``offsets`` and the neighbours of the lattice's wavefront hit L1/L2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _kernels
from .._dtypes import dtype_name
from .._plan import RowPlan
from ..backends.kernel_backend import KernelBackend
from .model import aligned16


def _aligned16(x) -> bool:
    """A 2-D GEMM operand (row-major or a transposed row-major view) whose contiguous
    extent and leading dimension are multiples of 16 bytes."""
    s0, s1 = x.strides
    extent, ld = (x.shape[1], s0) if s1 == x.itemsize else (x.shape[0], s1)
    return aligned16(extent * x.itemsize, ld)


@dataclass(slots=True)
class Launch:
    """One GPU launch of a call. ``kind``: ``kernel`` (cutrans's CUDA kernels),
    ``lattice``, ``gemm`` (cuBLAS), ``memset``/``fill``/``elementwise`` (CuPy elementwise),
    ``column_sum`` (CuPy ``sum(axis=0)``), ``reduce`` (CuPy full reduction).

    ``label``: the class the ledger reports it under (``gemm logits``, ``row_stats``...).
    ``steps``: lattice wavefront steps of its longest sample (``T_b + U_b``: the RNN-T
    kernel sweeps alpha and beta in parallel blocks; the arc-table kernel 2 (T_b + U_b)
    with beta).
    ``gemm``: (m, n, k, input dtype, output dtype, tf32, aligned) for GEMMs; ``aligned``:
    every operand's contiguous extent and leading dimension a multiple of 16 bytes.
    ``stream``: 1 for the pipelined one pass's side stream (its lattices), else 0; the kinds
    ``fork``/``mark``/``join`` (slot ``slot``) are its dependencies (``RecordingSide``), not
    launches.
    """

    kind: str
    name: str
    types: str
    grid: int
    block: int
    read: int = 0
    written: int = 0
    flops: int = 0
    steps: int = 0
    label: str = ""
    gemm: tuple | None = None
    stream: int = 0
    slot: int = 0

    @property
    def bytes(self) -> int:
        return self.read + self.written


def _types_str(types) -> str:
    return types if isinstance(types, str) else ",".join(types)


class RecordingProvider:
    """A kernel provider (``_kernels._Provider``'s ``launch``) that records launches.

    Each launch must name a compiled instantiation (template, types, block) of
    ``_kernels.KERNELS``: the recording cannot drift into launches that do not exist.
    """

    name = "ledger"

    def __init__(self, launches: list | None = None):
        self.launches = [] if launches is None else launches
        self.enabled = True

    def launch(self, template: str, types, block: int, grid: int, args: tuple, *,
               threads: int | None = None, shared_mem: int = 0,
               general: bool | None = None) -> None:
        spec = _kernels.KERNELS[template]
        key = (types,) if isinstance(types, str) else tuple(types)
        if key not in spec.types or block not in spec.blocks or \
                (general is not None) != bool(spec.general):
            raise ValueError(f"no compiled instantiation {spec.name(key, block, general)}")
        if self.enabled:
            grid = max(1, min(int(grid), _kernels.MAX_GRID))
            kind = "lattice" if template in ("lattice", "lattice_arcs") else "kernel"
            self.launches.append(Launch(kind,
                                        template, _types_str(types), grid,
                                        int(block if threads is None else threads),
                                        label=template))


class RecordingXP:
    """numpy, except that ``zeros``/``zeros_like``/``full``/``full_like`` also record the
    memset/fill launch a CuPy array of that size costs (lazily allocated NumPy memory)."""

    def __init__(self, recorder: RecordingProvider):
        self._rec = recorder

    def __getattr__(self, name):
        return getattr(np, name)

    def _record(self, kind, a):
        if self._rec.enabled and a.nbytes:
            self._rec.launches.append(Launch(kind, kind, dtype_name(a.dtype), 0, 0,
                                             written=int(a.nbytes), label=kind))
        return a

    def zeros(self, *args, **kw):
        return self._record("memset", np.zeros(*args, **kw))

    def zeros_like(self, *args, **kw):
        return self._record("memset", np.zeros_like(*args, **kw))

    def full(self, *args, **kw):
        return self._record("fill", np.full(*args, **kw))

    def full_like(self, *args, **kw):
        return self._record("fill", np.full_like(*args, **kw))


class RecordingSide:
    """The pipelined one pass's side stream in a dry run (``backends._side_stream``'s
    protocol): ``fn`` runs at once and its launches are recorded as stream 1, between a
    ``fork`` (the side stream waits for the main stream so far) and a ``mark`` of the slot;
    ``wait`` records a ``join`` (the main stream waits for the slot's last mark)."""

    def __init__(self, be: "RecordingBackend"):
        self.be = be

    def _sync(self, kind: str, slot: int, stream: int) -> None:
        if self.be.recording:
            self.be.launches.append(Launch(kind, kind, "", 0, 0, label="sync", stream=stream,
                                           slot=slot))

    def launch(self, slot: int, fn) -> None:
        self._sync("fork", slot, 1)
        start = len(self.be.launches)
        fn()
        for rec in self.be.launches[start:]:
            rec.stream = 1
        self._sync("mark", slot, 1)

    def wait(self, slot: int) -> None:
        self._sync("join", slot, 0)


class RecordingBackend(KernelBackend):
    """``KernelBackend`` on NumPy arrays whose launches are recorded, not run.

    ``launches``: the ``Launch`` list so far. ``recording = False`` turns the recording
    off (placeholders are still written): the ledger's memory run.
    """

    def __init__(self):
        self.recorder = RecordingProvider()
        super().__init__(self.recorder, RecordingXP(self.recorder), "ledger", self._gemm_op,
                         side_stream=lambda: RecordingSide(self))
        self._spans: dict = {}

    @property
    def launches(self) -> list:
        return self.recorder.launches

    @property
    def recording(self) -> bool:
        return self.recorder.enabled

    @recording.setter
    def recording(self, on: bool) -> None:
        self.recorder.enabled = bool(on)

    # ------------------------------------------------------------ helpers
    def _new(self, start: int, name: str | None = None) -> Launch | None:
        """The launch recorded since index ``start`` (named ``name``), if any."""
        for rec in self.launches[start:]:
            if name is None or rec.name == name:
                return rec
        return None

    def _plan(self, plan):
        """(host ``RowPlan``, ``T_b + U_b``) of a device plan (NumPy arrays here)."""
        hit = self._spans.get(id(plan.offsets))
        if hit is None or hit[0] is not plan.offsets:
            rp = RowPlan(np.asarray(plan.logit_len, np.int64),
                         np.asarray(plan.target_len, np.int64), plan.offsets,
                         plan.frame_offsets, plan.label_offsets)
            hit = self._spans[id(plan.offsets)] = (plan.offsets, rp,
                                                   rp.logit_len + rp.target_len)
        return hit[1], hit[2]

    # ------------------------------------------------------------ row ops
    def row_stats(self, z, layout, row0, n_rows, plan, topo, values, rbase=0, lse=None):
        start = len(self.launches)
        super().row_stats(z, layout, row0, n_rows, plan, topo, values, rbase, lse)
        rec = self._new(start)
        if rec is not None:
            V, s = layout.vocab or int(z.shape[-1]), z.itemsize
            c = values.itemsize
            rec.read = n_rows * (V * s + 4)
            rec.written = n_rows * c * (values.shape[1] + (lse.shape[1] if lse is not None
                                                           else 0))

    def row_grad(self, z, grad, layout, row0, n_rows, plan, topo, coefs, scale,
                 fastemit_lambda, clamp, rbase=0, lse=None, coefs2=None):
        start = len(self.launches)
        super().row_grad(z, grad, layout, row0, n_rows, plan, topo, coefs, scale,
                         fastemit_lambda, clamp, rbase, lse, coefs2)
        rec = self._new(start)
        if rec is not None:
            V, s, c = layout.vocab or int(z.shape[-1]), z.itemsize, coefs.itemsize
            reads = 1 if lse is not None else 2  # without lse the row is read twice
            per_row = coefs.shape[1] + (lse.shape[1] if lse is not None else 0) + \
                (2 if coefs2 is not None else 0)
            rec.read = n_rows * (reads * V * s + c * per_row + 4)
            rec.written = n_rows * V * s

    def lattice(self, plan, topo, b0, b1, rbase, values, alpha, beta, log_like, coefs,
                need_grad):
        start = len(self.launches)
        super().lattice(plan, topo, b0, b1, rbase, values, alpha, beta, log_like, coefs,
                        need_grad)
        if b1 > b0:
            log_like[b0:b1] = -1.0  # placeholder: the orchestration checks finiteness
        rec = self._new(start)
        if rec is not None:
            lens = self._plan(plan)[1]
            rows = int(plan.offsets[b1]) - int(plan.offsets[b0])
            c, W = values.itemsize, topo.width
            longest = int(lens[b0:b1].max())  # diagonals T_b + U_b of its longest sample
            grad = self._new(start, "lattice_grad")
            if rec.name == "lattice":  # alpha and beta sweeps in parallel blocks
                rec.steps = longest
                rec.read = rows * c * 2 * (2 if need_grad else 1)
                rec.written = rows * c * (2 if need_grad else 1) + (b1 - b0) * c
            else:  # lattice_arcs: alpha, then beta with the coefficients, in one block
                rec.steps = longest * (2 if need_grad else 1)
                rec.read = rows * c * ((2 * W + 4) if need_grad else W)
                rec.written = rows * c * ((W + 2) if need_grad else 1) + (b1 - b0) * c
            if grad is not None:  # values, alpha, beta (+ 2 neighbours, cached) -> coefs
                grad.read = rows * (c * (W + 2) + 8)
                grad.written = rows * c * W

    # ------------------------------------------------------------ joint
    def joint_forward(self, enc, pred, plan, row0, n_rows, activation, h):
        start = len(self.launches)
        super().joint_forward(enc, pred, plan, row0, n_rows, activation, h)
        rec = self._new(start)
        if rec is not None:
            ch = self._plan(plan)[0].chunk(row0, n_rows)
            H, s = int(enc.shape[-1]), enc.itemsize
            rec.read = (ch.n_frames + ch.n_slots) * H * s
            rec.written = n_rows * H * s

    def joint_backward(self, dh, enc, pred, plan, chunk, activation, d_enc, d_pred, out_b0=0,
                       accumulate=False):
        start = len(self.launches)
        super().joint_backward(dh, enc, pred, plan, chunk, activation, d_enc, d_pred, out_b0,
                               accumulate)
        H, s = int(enc.shape[-1]), enc.itemsize
        common = chunk.n * H * s + (chunk.n_frames + chunk.n_slots) * H * s
        for name, out, n_out in (("joint_backward_enc", d_enc, chunk.n_frames),
                                 ("joint_backward_pred", d_pred, chunk.n_slots)):
            rec = self._new(start, name)
            if rec is not None:
                o = out.itemsize
                rec.read = common + (n_out * H * o if accumulate else 0)
                rec.written = n_out * H * o

    # ------------------------------------------------------------ GEMM
    def _gemm_op(self, a, b, out, accumulate=False, tf32=False):
        """Records ``out (+)= a @ b`` (cuBLAS ``gemmEx`` on the GPU; see ``_cublas``)."""
        m, k = a.shape
        n = b.shape[1]
        if b.shape[0] != k or out.shape != (m, n):
            raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape}")
        if not self.recording or m == 0 or n == 0:
            return
        # which GEMM of the schedule: dW accumulates; z = h W_aug^T reads W_aug transposed
        if accumulate:
            label = "gemm dW"
        elif b.strides[0] < b.strides[1]:
            label = "gemm logits"
        else:
            label = "gemm dh"
        out_bytes = m * n * out.itemsize
        in_t, out_t = dtype_name(a.dtype), dtype_name(out.dtype)
        aligned = all(_aligned16(x) for x in (a, b, out))
        tf = bool(tf32) and in_t == "float32"
        self.launches.append(Launch(
            "gemm", "gemmEx", f"{in_t}->{out_t}" + (" tf32" if tf else ""), 0, 0,
            read=m * k * a.itemsize + k * n * b.itemsize + (out_bytes if accumulate else 0),
            written=out_bytes, flops=2 * m * n * k, label=label,
            gemm=(m, n, k, in_t, out_t, tf, aligned)))

    # ------------------------------------------------------------ API-level work
    def record_input_checks(self, *arrays) -> None:
        """The API's finiteness check of each float input: one full reduction each."""
        for a in arrays:
            if self.recording:
                self.launches.append(Launch("reduce", "sum", dtype_name(a.dtype), 0, 0,
                                            read=int(a.nbytes), label="input checks"))

