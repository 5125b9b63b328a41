"""The row plan: packing the lattices of a batch into one row space, and chunking it.

Row ``r`` of sample ``b`` at lattice point ``(t, u)`` is
``offsets[b] + t * (U_b + 1) + u``; ``offsets`` is the exclusive cumsum of
``T_b * (U_b + 1)``. A chunk is a contiguous row range; its size comes from a
workspace budget in bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RowPlan:
    """Host-side plan. ``logit_len``/``target_len`` (B,) int64; ``offsets`` (B+1,) int64."""

    logit_len: np.ndarray
    target_len: np.ndarray
    offsets: np.ndarray

    @property
    def batch(self) -> int:
        return int(self.logit_len.shape[0])

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def chunks(self, rows_per_chunk: int, sample_wise: bool = False) -> list[tuple[int, int]]:
        """Contiguous ``(row0, n_rows)`` ranges covering all rows, each ``<= rows_per_chunk``.

        ``sample_wise``: never let a chunk span two samples (the seed paper's
        one-utterance-at-a-time schedule); a sample larger than the budget is split.
        """
        if sample_wise:
            spans = [(int(self.offsets[b]), int(self.offsets[b + 1])) for b in range(self.batch)]
        else:
            spans = [(0, self.rows)]
        out = []
        for lo, hi in spans:
            for row0 in range(lo, hi, rows_per_chunk):
                out.append((row0, min(rows_per_chunk, hi - row0)))
        return out

    def sample_groups(self, max_rows: int | None) -> list[tuple[int, int]]:
        """Consecutive sample ranges ``[b0, b1)`` of at most ``max_rows`` rows each (a
        larger sample forms a group of its own); one group when ``max_rows`` is None."""
        if max_rows is None or self.rows <= max_rows:
            return [(0, self.batch)]
        groups, b0 = [], 0
        for b in range(1, self.batch + 1):
            if b == self.batch or self.offsets[b + 1] - self.offsets[b0] > max_rows:
                groups.append((b0, b))
                b0 = b
        return groups


def make_plan(logit_len: np.ndarray, target_len: np.ndarray) -> RowPlan:
    """Plan for per-sample frame counts ``logit_len`` and label counts ``target_len``."""
    t = np.asarray(logit_len, dtype=np.int64)
    u = np.asarray(target_len, dtype=np.int64)
    offsets = np.zeros(t.shape[0] + 1, dtype=np.int64)
    np.cumsum(t * (u + 1), out=offsets[1:])
    return RowPlan(logit_len=t, target_len=u, offsets=offsets)


@dataclass(frozen=True)
class DevicePlan:
    """Device copy of a plan for the kernels (see ``backends.base.DevicePlan``)."""

    offsets: Any
    logit_len: Any
    target_len: Any
    targets: Any
    batch: int
    rows: int
    max_diag: int = 1  # longest anti-diagonal of any lattice: max_b min(T_b, U_b + 1)


def to_device(plan: RowPlan, targets, xp) -> DevicePlan:
    """Copy the plan and the (B, U_max) targets into ``xp`` arrays (int64/int32)."""
    tg = xp.asarray(targets)
    if tg.shape[1] == 0:  # kernels always get at least one column
        tg = xp.zeros((tg.shape[0], 1), dtype=xp.int32)
    return DevicePlan(
        offsets=xp.asarray(plan.offsets, dtype=xp.int64),
        logit_len=xp.asarray(plan.logit_len, dtype=xp.int32),
        target_len=xp.asarray(plan.target_len, dtype=xp.int32),
        targets=xp.ascontiguousarray(tg.astype(xp.int32, copy=False)),
        batch=plan.batch,
        rows=plan.rows,
        max_diag=int(np.minimum(plan.logit_len, plan.target_len + 1).max(initial=1)),
    )


def subset(plan: RowPlan, dplan: DevicePlan, b0: int, b1: int, xp) -> DevicePlan:
    """The device plan of samples ``[b0, b1)``, row 0 at their first row."""
    t, u = plan.logit_len[b0:b1], plan.target_len[b0:b1]
    return DevicePlan(offsets=dplan.offsets[b0:b1 + 1] - xp.int64(plan.offsets[b0]),
                      logit_len=dplan.logit_len[b0:b1], target_len=dplan.target_len[b0:b1],
                      targets=dplan.targets[b0:b1], batch=b1 - b0,
                      rows=int(plan.offsets[b1] - plan.offsets[b0]),
                      max_diag=int(np.minimum(t, u + 1).max()))


def rows_per_chunk(budget_bytes: int, bytes_per_row: int, fixed_bytes: int, total_rows: int) -> int:
    """Largest chunk (in rows) whose workspace ``fixed + rows * per_row`` fits the budget."""
    rows = (int(budget_bytes) - int(fixed_bytes)) // int(bytes_per_row)
    if rows < 1:
        raise ValueError(
            f"max_workspace_bytes={budget_bytes} is too small: one row of the lattice needs "
            f"{bytes_per_row + fixed_bytes} bytes of workspace ({bytes_per_row} per row + "
            f"{fixed_bytes} fixed)")
    return int(min(rows, max(total_rows, 1)))
