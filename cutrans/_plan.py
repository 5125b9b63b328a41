"""The row plan: packing the lattices of a batch into one row space, and scheduling it.

Row ``r`` of sample ``b`` at lattice point ``(t, u)`` is
``offsets[b] + t * (U_b + 1) + u``; ``offsets`` is the exclusive cumsum of
``T_b * (U_b + 1)``. Frames and label slots are numbered the same way:
``frame_offsets`` (cumsum of ``T_b``) and ``label_offsets`` (cumsum of ``U_b + 1``).

The fused op works in a *schedule* of sample groups (``RowPlan.schedule``):

* a **resident** group is one chunk of whole samples whose rows fit the chunk workspace:
  its logits are computed once and stay in the workspace from the row statistics to the
  gradient (three GEMMs);
* a **split** group holds consecutive samples each larger than a chunk; each sample is cut
  into chunks, which the gradient pass recomputes (four GEMMs). Its per-row state (a few
  floats per row) is bounded by ``state_rows`` (or one sample, if larger).

The lattice runs once per group, on all of its samples.
"""
from __future__ import annotations

import atexit
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """Rows ``[row0, row0 + n)``; samples ``[b0, b1)`` have rows in it.

    ``split``: part of one sample larger than a chunk (``b1 == b0 + 1``), ``first``/``last``
    mark that sample's first and last chunk. ``f0, n_frames``: the frames ``(b, t)`` with
    rows in the chunk (consecutive global frame indices); ``l0, n_slots``: the label slots
    ``(b, u)`` of the chunk's samples (those without a row in the chunk are at the ends).
    """

    row0: int
    n: int
    b0: int
    b1: int
    split: bool
    first: bool
    last: bool
    f0: int
    n_frames: int
    l0: int
    n_slots: int


@dataclass(frozen=True)
class Group:
    """Samples ``[b0, b1)`` = rows ``[row0, row1)``, worked as ``chunks``."""

    b0: int
    b1: int
    row0: int
    row1: int
    chunks: tuple[Chunk, ...]

    @property
    def rows(self) -> int:
        return self.row1 - self.row0

    @property
    def resident(self) -> bool:
        """One chunk of whole samples: its logits stay in the workspace."""
        return len(self.chunks) == 1 and not self.chunks[0].split


@dataclass(frozen=True)
class RowPlan:
    """Host-side plan: ``logit_len``/``target_len`` (B,) int64; offsets (B+1,) int64."""

    logit_len: np.ndarray
    target_len: np.ndarray
    offsets: np.ndarray
    frame_offsets: np.ndarray
    label_offsets: np.ndarray

    @property
    def batch(self) -> int:
        return int(self.logit_len.shape[0])

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def max_sample_rows(self) -> int:
        return int(np.diff(self.offsets).max(initial=0))

    def chunk(self, row0: int, n: int, split: bool = False, first: bool = True,
              last: bool = True) -> Chunk:
        """The ``Chunk`` of rows ``[row0, row0 + n)`` (n >= 1)."""
        off = self.offsets
        b_first = int(np.searchsorted(off, row0, side="right") - 1)
        b_last = int(np.searchsorted(off, row0 + n - 1, side="right") - 1)
        u1 = self.target_len + 1
        t_first = (row0 - int(off[b_first])) // int(u1[b_first])
        t_last = (row0 + n - 1 - int(off[b_last])) // int(u1[b_last])
        f0 = int(self.frame_offsets[b_first]) + t_first
        l0 = int(self.label_offsets[b_first])
        return Chunk(row0, n, b_first, b_last + 1, split, first, last, f0,
                     int(self.frame_offsets[b_last]) + t_last - f0 + 1, l0,
                     int(self.label_offsets[b_last + 1]) - l0)

    def schedule(self, chunk_rows: int, state_rows: int | None = None,
                 sample_wise: bool = False) -> list[Group]:
        """Groups covering all samples in order (see the module docstring).

        ``chunk_rows``: rows per chunk; ``state_rows``: rows of per-row state a split group
        may hold (default ``chunk_rows``); ``sample_wise``: one sample per group (the seed
        paper's schedule).
        """
        state_rows = max(state_rows or chunk_rows, chunk_rows)
        sizes = np.diff(self.offsets)
        groups: list[Group] = []
        cur: list[int] = []
        cur_big, cur_rows = False, 0
        for b in range(self.batch):
            big = int(sizes[b]) > chunk_rows
            limit = state_rows if big else chunk_rows
            if cur and (sample_wise or big != cur_big or cur_rows + int(sizes[b]) > limit):
                groups.append(self._group(cur[0], cur[-1] + 1, cur_big, chunk_rows))
                cur, cur_rows = [], 0
            cur.append(b)
            cur_big, cur_rows = big, cur_rows + int(sizes[b])
        if cur:
            groups.append(self._group(cur[0], cur[-1] + 1, cur_big, chunk_rows))
        return groups

    def _group(self, b0: int, b1: int, big: bool, chunk_rows: int) -> Group:
        r0, r1 = int(self.offsets[b0]), int(self.offsets[b1])
        if not big:
            return Group(b0, b1, r0, r1, (self.chunk(r0, r1 - r0),))
        chunks = []
        for b in range(b0, b1):
            lo, hi = int(self.offsets[b]), int(self.offsets[b + 1])
            for row0 in range(lo, hi, chunk_rows):
                n = min(chunk_rows, hi - row0)
                chunks.append(self.chunk(row0, n, True, row0 == lo, row0 + n == hi))
        return Group(b0, b1, r0, r1, tuple(chunks))

    def whole(self) -> Group:
        """All samples as one group of one chunk (the logits op)."""
        return Group(0, self.batch, 0, self.rows, (self.chunk(0, self.rows),)
                     if self.rows else ())


def make_plan(logit_len: np.ndarray, target_len: np.ndarray) -> RowPlan:
    """Plan for per-sample frame counts ``logit_len`` and label counts ``target_len``."""
    t = np.asarray(logit_len, dtype=np.int64)
    u = np.asarray(target_len, dtype=np.int64)

    def excl_cumsum(x):
        out = np.zeros(x.shape[0] + 1, dtype=np.int64)
        np.cumsum(x, out=out[1:])
        return out
    return RowPlan(logit_len=t, target_len=u, offsets=excl_cumsum(t * (u + 1)),
                   frame_offsets=excl_cumsum(t), label_offsets=excl_cumsum(u + 1))


@dataclass(frozen=True)
class DevicePlan:
    """Device copy of a plan for the kernels (see ``backends.base.DevicePlan``)."""

    offsets: Any
    frame_offsets: Any
    label_offsets: Any
    logit_len: Any
    target_len: Any
    targets: Any
    batch: int
    rows: int
    max_diag: int = 1  # longest anti-diagonal of any lattice: max_b min(T_b, U_b + 1)


_PLAN_CACHE: OrderedDict = OrderedDict()  # (device, lengths) -> device plan arrays
_PLAN_CACHE_SIZE = 16
_PLAN_LOCK = threading.Lock()
# Freed at exit, before the interpreter tears modules down: arrays made under the torch
# adapter come from PyTorch's allocator, whose free callback needs torch still importable
# (at teardown it printed "Error in sys.excepthook" on the H100 image).
atexit.register(_PLAN_CACHE.clear)


def _plan_arrays(plan: RowPlan, xp) -> tuple:
    """(offsets, frame_offsets, label_offsets, logit_len, target_len) in ``xp``.

    On a device they are cached by (device, lengths): a call with lengths seen recently
    copies nothing to the device (what a CUDA-graph replay needs)."""
    def make():
        return (xp.asarray(plan.offsets, dtype=xp.int64),
                xp.asarray(plan.frame_offsets, dtype=xp.int64),
                xp.asarray(plan.label_offsets, dtype=xp.int64),
                xp.asarray(plan.logit_len, dtype=xp.int32),
                xp.asarray(plan.target_len, dtype=xp.int32))
    if getattr(xp, "cuda", None) is None:  # host arrays: nothing to cache
        return make()
    key = (xp.__name__, int(xp.cuda.Device().id), plan.logit_len.tobytes(),
           plan.target_len.tobytes())
    with _PLAN_LOCK:
        arrays = _PLAN_CACHE.get(key)
        if arrays is not None:
            _PLAN_CACHE.move_to_end(key)
            return arrays
        arrays = _PLAN_CACHE[key] = make()
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
        return arrays


def device_ints(xp, values: tuple):
    """A small constant int32 array (blank ids, arc tables) in ``xp``, cached on a device
    like the plan (a CUDA-graph replay copies nothing)."""
    if getattr(xp, "cuda", None) is None:
        return np.asarray(values, dtype=np.int32)
    key = (xp.__name__, int(xp.cuda.Device().id), "ints", tuple(values))
    with _PLAN_LOCK:
        arr = _PLAN_CACHE.get(key)
        if arr is None:
            arr = _PLAN_CACHE[key] = xp.asarray(np.asarray(values, dtype=np.int32))
            while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
                _PLAN_CACHE.popitem(last=False)
        return arr


def to_device(plan: RowPlan, targets, xp) -> DevicePlan:
    """The plan (cached on a device) and the (B, U_max) targets as ``xp`` arrays."""
    tg = xp.asarray(targets)
    if tg.shape[1] == 0:  # kernels always get at least one column
        tg = xp.zeros((tg.shape[0], 1), dtype=xp.int32)
    elif tg.dtype.itemsize > 4:  # a wide label the int32 cast would wrap stays out of range
        tg = xp.clip(tg, -1, np.iinfo(np.int32).max)
    offsets, frame_offsets, label_offsets, logit_len, target_len = _plan_arrays(plan, xp)
    return DevicePlan(
        offsets=offsets, frame_offsets=frame_offsets, label_offsets=label_offsets,
        logit_len=logit_len, target_len=target_len,
        targets=xp.ascontiguousarray(tg.astype(xp.int32, copy=False)),
        batch=plan.batch,
        rows=plan.rows,
        max_diag=int(np.minimum(plan.logit_len, plan.target_len + 1).max(initial=1)),
    )


def max_diag(plan: RowPlan, b0: int, b1: int) -> int:
    """Longest anti-diagonal of samples ``[b0, b1)`` (threads of a lattice block)."""
    t, u = plan.logit_len[b0:b1], plan.target_len[b0:b1]
    return int(np.minimum(t, u + 1).max(initial=1))


def rows_per_chunk(budget_bytes: int, bytes_per_row: int, fixed_bytes: int, total_rows: int) -> int:
    """Largest chunk (in rows) whose workspace ``fixed + rows * per_row`` fits the budget."""
    rows = (int(budget_bytes) - int(fixed_bytes)) // int(bytes_per_row)
    if rows < 1:
        raise ValueError(
            f"max_workspace_bytes={budget_bytes} is too small: one row of the lattice needs "
            f"{bytes_per_row + fixed_bytes} bytes of workspace ({bytes_per_row} per row + "
            f"{fixed_bytes} fixed)")
    return int(min(rows, max(total_rows, 1)))
