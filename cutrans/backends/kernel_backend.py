"""CUDA-kernel backends: CuPy (GPU) and the CPU emulation of the very same kernels.

``KernelBackend`` implements ``backends.base.Backend`` by launching the kernels of
``kernels/*.cu`` through a module provider (``cutrans._kernels``); ``xp`` is cupy or numpy.
Ops only enqueue launches (on the current CuPy stream for ``cupy_backend()``): no host
synchronisation, no allocation. An optional per-row array the kernel does not touch (a flag
says so) is passed as another array of the same type. Scalars go with explicit numpy types; bfloat16 arrays go as
uint16 views (the kernels reinterpret them as ``__nv_bfloat16``). Limit: at most 2^31 - 1
rows in a plan (the kernels use 32-bit arithmetic inside a sample's lattice).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import _kernels
from .._dtypes import dtype_name
from .._plan import device_ints

_i32, _i64 = np.int32, np.int64
MAX_ROWS = 2**31 - 1  # kernels index a sample's lattice with 32-bit arithmetic


def _check_rows(plan):
    if plan.rows > MAX_ROWS:
        raise ValueError(f"the CUDA kernels support at most {MAX_ROWS} lattice rows "
                         f"(sum of T_b * (U_b + 1)), got {plan.rows}; split the batch")


def _ptr(a, xp):
    """A kernel argument for an array: bfloat16 as a uint16 view, others as they are."""
    return a.view(xp.uint16) if dtype_name(a.dtype) == "bfloat16" else a


def _layout_args(layout):
    return (_i32(1 if layout.packed else 0), _i64(layout.ld), _i64(layout.sb), _i64(layout.st),
            _i64(layout.su))


class KernelBackend:
    """Backend running the CUDA kernels through ``provider`` on arrays of ``xp``.

    ``gemm``: the GEMM route (cuBLAS for CuPy, the NumPy reference for the emulation);
    ``prepare_capture``: its preparation for CUDA-graph capture (None: nothing to do);
    ``side_stream``: makes the pipelined one pass's side stream (``_side_stream``).
    """

    def __init__(self, provider, xp, name: str, gemm, prepare_capture=None, side_stream=None):
        self.provider, self.xp, self.name, self._gemm = provider, xp, name, gemm
        self._prepare_capture = prepare_capture
        self._side_stream = side_stream

    def _launch_rows(self, template, dtype, width, n_rows, args, general=None):
        """A row-wise kernel: ``pick_row_threads(width)`` threads per row; ``general``: the
        row kernels' GENERAL template argument (None for kernels without it)."""
        tpr = _kernels.pick_row_threads(width)
        self.provider.launch(template, dtype, tpr, _kernels.row_grid(n_rows, tpr), args,
                             threads=_kernels.ROW_BLOCK, general=general)

    def _plan_args(self, plan, frames: bool = False):
        """The row kernels' plan arguments (``frames``: with the frame counts)."""
        _check_rows(plan)
        return (plan.offsets, plan.target_len, *((plan.logit_len,) if frames else ()),
                plan.targets, _i64(plan.targets.shape[1]), _i32(plan.batch))

    # ---------------------------------------------------------------- row ops
    def _topo_args(self, topo):
        return (device_ints(self.xp, topo.blanks), _i32(len(topo.blanks)))

    def row_stats(self, z, layout, row0, n_rows, plan, topo, values, rbase=0, lse=None):
        if n_rows <= 0:
            return
        n_logits = layout.vocab or int(z.shape[-1])
        cdt = values.dtype.type
        args = (_ptr(z, self.xp), _i64(row0), _i64(n_rows), _i32(n_logits),
                _i32(topo.vocab(n_logits)), *_layout_args(layout),
                *self._plan_args(plan, frames=True), *self._topo_args(topo), cdt(topo.sigma),
                cdt(topo.delay_penalty), _i64(rbase), values,
                values if lse is None else lse, _i32(lse is not None))
        self._launch_rows("row_stats", dtype_name(z.dtype), n_logits, n_rows, args,
                          not topo.lean_rows)

    def row_grad(self, z, grad, layout, row0, n_rows, plan, topo, coefs, scale,
                 fastemit_lambda, clamp, rbase=0, lse=None, coefs2=None):
        if n_rows <= 0:
            return
        n_logits = layout.vocab or int(z.shape[-1])
        cdt = coefs.dtype.type
        args = (_ptr(z, self.xp), _ptr(grad, self.xp), _i64(row0), _i64(n_rows),
                _i32(n_logits), _i32(topo.vocab(n_logits)), *_layout_args(layout),
                *self._plan_args(plan), *self._topo_args(topo), _i64(rbase), coefs,
                coefs if coefs2 is None else coefs2, cdt(topo.omega if coefs2 is not None else 0),
                coefs if lse is None else lse, _i32(lse is not None), scale,
                cdt(fastemit_lambda), cdt(clamp))
        self._launch_rows("row_grad", dtype_name(z.dtype), n_logits, n_rows, args,
                          not topo.lean_rows)

    def check_targets(self, plan, vocab, topo, status):
        width = int(plan.targets.shape[1])
        self.provider.launch("check_targets", (), _kernels.pick_block(width), plan.batch,
                             (plan.targets, _i64(width), plan.target_len, _i32(plan.batch),
                              _i32(vocab), *self._topo_args(topo), status))

    # ---------------------------------------------------------------- lattice
    def lattice(self, plan, topo, b0, b1, rbase, values, alpha, beta, log_like, coefs,
                need_grad):
        # threads of a block share one anti-diagonal (longest: plan.max_diag cells)
        _check_rows(plan)
        if b1 <= b0:
            return
        dt = dtype_name(values.dtype)
        common = (plan.offsets, plan.logit_len, plan.target_len, _i32(b0), _i32(b1),
                  _i64(rbase))
        if topo.variant == "rnnt":  # the specialised kernels (diagonals in shared memory)
            cells = _kernels.lattice_diag_cells(plan.max_diag, values.dtype.itemsize)
            w_in = _i32(values.shape[1])
            sweeps = 2 if need_grad else 1  # alpha and beta sweeps in parallel blocks
            self.provider.launch("lattice", dt, _kernels.lattice_block(plan.max_diag),
                                 (b1 - b0) * sweeps, (
                *common, values, w_in, alpha, beta, log_like, _i32(bool(need_grad)),
                _i32(cells)), shared_mem=2 * cells * values.dtype.itemsize)
            if need_grad:  # the coefficients: a thread per row (alpha holds >= the rows)
                self.provider.launch("lattice_grad", dt, _kernels.ROW_BLOCK,
                                     -(-int(alpha.shape[0]) // _kernels.ROW_BLOCK), (
                    *common, values, w_in, alpha, beta, log_like, coefs,
                    _i32(coefs.shape[1])))
            return
        arcs = topo.arc_table()
        args = (*common, values, _i32(values.shape[1]), device_ints(self.xp, arcs),
                _i32(len(arcs) // 5), alpha, beta, log_like, coefs, _i32(bool(need_grad)))
        self.provider.launch("lattice_arcs", dt, _kernels.pick_block(plan.max_diag), b1 - b0,
                             args)

    # ---------------------------------------------------------------- joint
    def joint_forward(self, enc, pred, plan, row0, n_rows, activation, h):
        if n_rows <= 0:
            return
        H = int(enc.shape[-1])
        args = (_ptr(enc, self.xp), _ptr(pred, self.xp), plan.offsets, plan.target_len,
                _i32(plan.batch), _i64(row0), _i64(n_rows), _i32(H), _i64(enc.shape[1]),
                _i64(pred.shape[1]), _i32(activation), _ptr(h, self.xp), _i64(h.shape[1]))
        self._launch_rows("joint_forward", dtype_name(enc.dtype), H, n_rows, args)

    def joint_backward(self, dh, enc, pred, plan, chunk, activation, d_enc, d_pred, out_b0=0,
                       accumulate=False):
        H = int(enc.shape[-1])
        T, xp = dtype_name(enc.dtype), self.xp
        block = _kernels.JOINT_BACKWARD_BLOCK
        lanes = _i32(_kernels.joint_backward_lanes(H, enc.dtype.itemsize))
        common = (_ptr(dh, xp), _i64(dh.shape[1]), _ptr(enc, xp), _ptr(pred, xp), plan.offsets)
        rows = (_i64(chunk.row0), _i64(chunk.n))
        if d_enc is not None:
            self.provider.launch("joint_backward_enc", (T, dtype_name(d_enc.dtype)), block,
                                 chunk.n_frames, (
                *common, plan.frame_offsets, plan.target_len, _i32(plan.batch), *rows,
                _i64(chunk.f0), _i64(chunk.n_frames), _i32(H), _i64(enc.shape[1]),
                _i64(pred.shape[1]), _i32(activation), _ptr(d_enc, xp), _i32(out_b0),
                _i64(d_enc.shape[1]), _i32(bool(accumulate)), lanes))
        if d_pred is not None:
            self.provider.launch("joint_backward_pred", (T, dtype_name(d_pred.dtype)), block,
                                 chunk.n_slots, (
                *common, plan.label_offsets, plan.logit_len, plan.target_len,
                _i32(plan.batch), *rows, _i64(chunk.l0), _i64(chunk.n_slots), _i32(H),
                _i64(enc.shape[1]), _i64(pred.shape[1]), _i32(activation), _ptr(d_pred, xp),
                _i32(out_b0), _i64(d_pred.shape[1]), _i32(bool(accumulate)), lanes))

    # ---------------------------------------------------------------- GEMM
    def gemm(self, a, b, out, accumulate=False, tf32=False):
        self._gemm(a, b, out, accumulate, tf32)

    def prepare_capture(self):
        if self._prepare_capture is not None:
            self._prepare_capture()

    def side_stream(self):
        return self._side_stream() if self._side_stream is not None else None


@functools.lru_cache(maxsize=None)
def cupy_backend() -> KernelBackend:
    """The CuPy backend (kernels compiled lazily per device, on first use; cuBLAS GEMMs)."""
    import cupy

    from ._cublas import gemm, prepare_capture
    from ._side_stream import cupy_side
    return KernelBackend(_kernels.CupyProvider(), cupy, "cupy", gemm, prepare_capture,
                         cupy_side)


@functools.lru_cache(maxsize=None)
def emulated_backend(mode: str = "fiber", order: str = "forward",
                     sanitizer: str | None = None) -> KernelBackend:
    """The same kernels on the CPU (NumPy arrays) through ``cutrans.emulation``; the GEMMs
    are the NumPy reference's (same precision contract as cuBLAS's). ``sanitizer``:
    "address" / "thread" builds (see ``cutrans.emulation.sanitizer_env``)."""
    from ._side_stream import InlineSide
    from .numpy_backend import NumpyBackend
    return KernelBackend(_kernels.EmulatedProvider(mode, order, sanitizer), np, "emulated",
                         NumpyBackend().gemm, side_stream=InlineSide)
