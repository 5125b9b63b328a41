"""Dry runs: the real orchestration on the recording backend, and its memory.

``dry_run`` drives the code a call runs -- ``_fused.one_pass`` (reduction "mean"/"sum",
what ``transducer_loss`` runs), ``_fused.forward`` + ``_fused.backward`` (reduction
"none"), or ``_orchestrate.logits_forward`` + ``logits_backward`` (``rnnt_loss`` on packed
logits) -- on inputs made with ``np.empty`` (lazily allocated: a headline-size run touches
no GBs), bypassing the API's data-touching validation (its finiteness reductions over the
float inputs are recorded as launches instead). No hook in ``_fused``/``_orchestrate`` is
needed.

Two passes over the orchestration: one with ``tracemalloc`` on and the recording off
(NumPy reports its allocations, lazily allocated ones included, to ``tracemalloc``; the
launch records would otherwise count), one recording the launches.

Memory (all modelled, bytes):

* ``own``: the ``tracemalloc`` peak of the orchestration's allocations less the returned
  gradients (exact when the peak is at the end; else high by at most dW + db), plus the
  device copies of the plan and the targets (NumPy returns the host arrays themselves;
  CuPy copies them: ``3 (B+1) 8 + 2 B 4 + B U 4`` bytes, and the API's device targets).
* ``total`` = inputs (enc, pred, weight, bias, targets, lengths) + gradients + own.

Not modelled: the CuPy memory pool's rounding and caching, cuBLAS's workspace (tens of
MiB), the CUDA context.
"""
from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from .. import _fused, _orchestrate, _status, api
from .._dtypes import DTYPES
from .._plan import make_plan
from .._topology import Topology
from ..api import DEFAULT_WORKSPACE_BYTES
from ..bench.workloads import WORKLOADS, draw_lengths
from .record import RecordingBackend
from .replay import PROFILED_LENGTHS, PROFILED_SHAPE

PATHS = ("one-pass", "two-pass", "logits")
PROFILED_WORKLOAD = "librispeech-profiled"
DEFAULT_BUDGET = DEFAULT_WORKSPACE_BYTES


@dataclass(frozen=True)
class Shape:
    """A workload for the ledger: padded sizes and per-sample lengths."""

    name: str
    t_len: np.ndarray
    u_len: np.ndarray
    vocab: int
    hidden: int
    frames: int
    labels: int

    @property
    def batch(self) -> int:
        return int(self.t_len.shape[0])


def workload_names() -> list[str]:
    return [PROFILED_WORKLOAD] + sorted(WORKLOADS)


def get_shape(name: str, seed: int = 0) -> Shape:
    """``librispeech-profiled`` (GPU-FINDINGS' "libri" batch: ``replay.PROFILED_LENGTHS``,
    V=500, H=512) or a bench workload (``bench.workloads``, lengths drawn with ``seed``)."""
    if name == PROFILED_WORKLOAD:
        t, u = (np.array(x, dtype=np.int64) for x in zip(*PROFILED_LENGTHS))
        return Shape(name, t, u, PROFILED_SHAPE["vocab"], PROFILED_SHAPE["hidden"],
                     int(t.max()), int(u.max()))
    if name not in WORKLOADS:
        raise ValueError(f"workload: expected one of {', '.join(workload_names())}, got {name!r}")
    w = WORKLOADS[name]
    t, u, T, U = draw_lengths(w, seed)
    return Shape(name, t, u, w.vocab, w.hidden, T, U)


@dataclass
class DryRun:
    """The launches and memory of one modelled call (see the module docstring)."""

    config: dict
    launches: list
    memory: dict  # bytes: inputs, gradients, own, total, budget, tracemalloc_peak, plan
    schedule: dict = field(default_factory=dict)


def _dtype(name: str):
    dt = DTYPES[name][0]
    if dt is None:
        raise ValueError(f"dtype {name}: needs ml_dtypes")
    return dt


def _inputs(shape: Shape, dtype):
    B, T, U, V, H = shape.batch, shape.frames, shape.labels, shape.vocab, shape.hidden
    return (np.empty((B, T, H), dtype), np.empty((B, U + 1, H), dtype),
            np.empty((V, H), dtype), np.empty((V,), dtype), np.ones((B, U), np.int32))


def _schedule_summary(f, plan, budget, sample_wise, path, pipeline=False) -> dict:
    if path == "logits" or not isinstance(f, _fused.FusedInputs):
        return {"groups": 1, "resident_groups": 1, "split_chunks": 0, "chunk_rows": plan.rows}
    fixed = _fused.fixed_bytes(f, True, True)
    if path == "one-pass":
        sched, _ = _fused.one_pass_schedule(f, plan, budget, sample_wise, fixed, pipeline)
    else:
        sched = _fused.make_schedule(f, plan, budget, sample_wise, _fused.TWO_PASS_STATE, fixed)
    return {"groups": len(sched.groups),
            "resident_groups": sum(g.resident for g in sched.groups),
            "split_chunks": sum(len(g.chunks) for g in sched.groups if not g.resident),
            "chunks": sum(len(g.chunks) for g in sched.groups),
            "chunk_rows": sched.chunk_rows, "state_rows": sched.state_rows}


def _call(be, path, f, targets, plan, budget, sample_wise, pipeline=False):
    """One call of the orchestration; returns the gradients it hands back. ``f``: the
    ``FusedInputs``, or the packed logits for the ``logits`` path."""
    B = plan.batch
    # the host checks of a GPU call (api._run_checked): a status word for the labels'
    # kernel check and the flags; the fused op's input reductions after the work
    status = _status.new_status(np)
    if path == "one-pass":  # reduction "mean", as transducer_loss by default
        owed = api.reduced_grad_factors("mean", f.enc.dtype, B)
        _, grads = _fused.one_pass(be, f, targets, plan, **api.one_pass_scales("mean", owed, B),
                                   needs=(True, True, True, True), max_workspace_bytes=budget,
                                   sample_wise=sample_wise, pipeline=pipeline, status=status)
        be.record_input_checks(f.enc, f.pred, f.weight, f.bias)
        return grads
    if path == "two-pass":
        _, ctx = _fused.forward(be, f, targets, plan, need_grad=True,
                                max_workspace_bytes=budget, sample_wise=sample_wise,
                                status=status)
        be.record_input_checks(f.enc, f.pred, f.weight, f.bias)
        return _fused.backward(ctx, np.ones(B, dtype=ctx.coefs.dtype))
    _, ctx = _orchestrate.logits_forward(be, f, targets, plan, Topology(), packed=True,
                                         fastemit_lambda=0.0, clamp=0.0, need_grad=True,
                                         status=status)
    return (_orchestrate.logits_backward(ctx, np.ones(B, dtype=ctx.coefs.dtype)),)


def dry_run(shape: Shape, dtype: str = "float32", *, budget: int = DEFAULT_BUDGET,
            sample_wise: bool = False, tf32: bool = False, path: str = "one-pass",
            pipeline: bool = False) -> DryRun:
    """Record one call of ``path`` on ``shape`` (see the module docstring); ``pipeline``:
    the pipelined one pass (its side stream's launches recorded as stream 1)."""
    if path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(PATHS)}, got {path!r}")
    dt = _dtype(dtype)
    plan = make_plan(shape.t_len, shape.u_len)
    B, U = shape.batch, shape.labels
    enc, pred, weight, bias, targets = _inputs(shape, dt)
    f = _fused.FusedInputs(enc, pred, weight, bias, activation=0, topo=Topology(),
                           fastemit_lambda=0.0, clamp=0.0, tf32=tf32)
    inputs = [enc, pred, weight, bias, targets]
    if path == "logits":  # rnnt_loss(layout="packed") on (R, V) logits
        f = np.empty((plan.rows, shape.vocab), dt)
        inputs = [f, targets]
    input_bytes = sum(int(a.nbytes) for a in inputs) + 2 * B * 4  # + the two length arrays
    # pass 1: memory (recording off: its records would count)
    be = RecordingBackend()
    be.recording = False
    tracemalloc.start()
    try:
        grads = _call(be, path, f, targets, plan, budget, sample_wise, pipeline)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grad_bytes = sum(int(g.nbytes) for g in grads if g is not None)
    del grads
    plan_bytes = 3 * (B + 1) * 8 + 2 * B * 4 + 2 * B * max(1, U) * 4
    own = peak - grad_bytes + plan_bytes
    # pass 2: the launches
    be = RecordingBackend()
    _call(be, path, f, targets, plan, budget, sample_wise, pipeline)
    config = {"workload": shape.name, "batch": B, "frames": shape.frames, "labels": U,
              "vocab": shape.vocab, "hidden": shape.hidden, "dtype": dtype, "tf32": bool(tf32),
              "budget": int(budget), "sample_wise": bool(sample_wise), "path": path,
              "pipeline": bool(pipeline),
              "rows": plan.rows, "max_T_plus_U": int((shape.t_len + shape.u_len).max())}
    memory = {"inputs": input_bytes, "gradients": grad_bytes, "own": own,
              "total": input_bytes + grad_bytes + own, "budget": int(budget),
              "tracemalloc_peak": peak, "plan": plan_bytes,
              "own_bound_extra": own - int(budget)}
    return DryRun(config, be.launches, memory,
                  _schedule_summary(f, plan, budget, sample_wise, path, pipeline))
