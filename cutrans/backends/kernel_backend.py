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

    ``gemm``: the GEMM route (cuBLAS for CuPy, the NumPy reference for the emulation).
    """

    def __init__(self, provider, xp, name: str, gemm):
        self.provider, self.xp, self.name, self._gemm = provider, xp, name, gemm

    def _launch_rows(self, template, dtype, width, n_rows, args):
        """A row-wise kernel: ``pick_row_threads(width)`` threads per row."""
        tpr = _kernels.pick_row_threads(width)
        self.provider.launch(template, dtype, tpr, _kernels.row_grid(n_rows, tpr), args,
                             threads=_kernels.ROW_BLOCK)

    def _plan_args(self, plan):
        _check_rows(plan)
        return (plan.offsets, plan.target_len, plan.targets, _i64(plan.targets.shape[1]),
                _i32(plan.batch))

    # ---------------------------------------------------------------- row ops
    def row_stats(self, z, layout, row0, n_rows, plan, blank, lp_blank, lp_emit, rbase=0,
                  lse=None):
        if n_rows <= 0:
            return
        V = layout.vocab or int(z.shape[-1])
        args = (_ptr(z, self.xp), _i64(row0), _i64(n_rows), _i32(V), *_layout_args(layout),
                *self._plan_args(plan), _i32(blank), _i64(rbase), lp_blank, lp_emit,
                lp_blank if lse is None else lse, _i32(lse is not None))
        self._launch_rows("row_stats", dtype_name(z.dtype), V, n_rows, args)

    def row_grad(self, z, grad, layout, row0, n_rows, plan, blank, coef_blank, coef_emit,
                 scale, fastemit_lambda, clamp, rbase=0, lse=None):
        if n_rows <= 0:
            return
        V = layout.vocab or int(z.shape[-1])
        cdt = coef_blank.dtype.type
        args = (_ptr(z, self.xp), _ptr(grad, self.xp), _i64(row0), _i64(n_rows), _i32(V),
                *_layout_args(layout), *self._plan_args(plan), _i32(blank), _i64(rbase),
                coef_blank, coef_emit, coef_blank if lse is None else lse,
                _i32(lse is not None), scale, cdt(fastemit_lambda), cdt(clamp))
        self._launch_rows("row_grad", dtype_name(z.dtype), V, n_rows, args)

    def check_targets(self, plan, vocab, blank, status):
        width = int(plan.targets.shape[1])
        self.provider.launch("check_targets", (), _kernels.pick_block(width), plan.batch,
                             (plan.targets, _i64(width), plan.target_len, _i32(plan.batch),
                              _i32(vocab), _i32(blank), status))

    # ---------------------------------------------------------------- lattice
    def lattice(self, plan, b0, b1, rbase, lp_blank, lp_emit, alpha, beta, log_like,
                coef_blank, coef_emit, need_grad):
        # threads of a block share one anti-diagonal (longest: plan.max_diag cells)
        _check_rows(plan)
        if b1 <= b0:
            return
        block = _kernels.pick_block(plan.max_diag)
        cells = _kernels.lattice_diag_cells(plan.max_diag, lp_blank.dtype.itemsize)
        args = (plan.offsets, plan.logit_len, plan.target_len, _i32(b0), _i32(b1), _i64(rbase),
                lp_blank, lp_emit, alpha, beta, log_like, coef_blank, coef_emit,
                _i32(bool(need_grad)), _i32(cells))
        self.provider.launch("lattice", dtype_name(lp_blank.dtype), block, b1 - b0, args,
                             shared_mem=2 * cells * lp_blank.dtype.itemsize)

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
        T, block, xp = dtype_name(enc.dtype), _kernels.pick_block(H), self.xp
        common = (_ptr(dh, xp), _i64(dh.shape[1]), _ptr(enc, xp), _ptr(pred, xp), plan.offsets)
        rows = (_i64(chunk.row0), _i64(chunk.n))
        if d_enc is not None:
            self.provider.launch("joint_backward_enc", (T, dtype_name(d_enc.dtype)), block,
                                 chunk.n_frames, (
                *common, plan.frame_offsets, plan.target_len, _i32(plan.batch), *rows,
                _i64(chunk.f0), _i64(chunk.n_frames), _i32(H), _i64(enc.shape[1]),
                _i64(pred.shape[1]), _i32(activation), _ptr(d_enc, xp), _i32(out_b0),
                _i64(d_enc.shape[1]), _i32(bool(accumulate))))
        if d_pred is not None:
            self.provider.launch("joint_backward_pred", (T, dtype_name(d_pred.dtype)), block,
                                 chunk.n_slots, (
                *common, plan.label_offsets, plan.logit_len, plan.target_len,
                _i32(plan.batch), *rows, _i64(chunk.l0), _i64(chunk.n_slots), _i32(H),
                _i64(enc.shape[1]), _i64(pred.shape[1]), _i32(activation), _ptr(d_pred, xp),
                _i32(out_b0), _i64(d_pred.shape[1]), _i32(bool(accumulate))))

    # ---------------------------------------------------------------- GEMM
    def gemm(self, a, b, out, accumulate=False, tf32=False):
        self._gemm(a, b, out, accumulate, tf32)


@functools.lru_cache(maxsize=None)
def cupy_backend() -> KernelBackend:
    """The CuPy backend (kernels compiled lazily per device, on first use; cuBLAS GEMMs)."""
    import cupy

    from ._cublas import gemm
    return KernelBackend(_kernels.CupyProvider(), cupy, "cupy", gemm)


@functools.lru_cache(maxsize=None)
def emulated_backend(mode: str = "fiber", order: str = "forward",
                     sanitizer: str | None = None) -> KernelBackend:
    """The same kernels on the CPU (NumPy arrays) through ``cutrans.emulation``; the GEMMs
    are the NumPy reference's (same precision contract as cuBLAS's). ``sanitizer``:
    "address" / "thread" builds (see ``cutrans.emulation.sanitizer_env``)."""
    from .numpy_backend import NumpyBackend
    return KernelBackend(_kernels.EmulatedProvider(mode, order, sanitizer), np, "emulated",
                         NumpyBackend().gemm)
