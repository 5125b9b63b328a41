"""Padded grids of the NumPy lattices (``numpy_backend`` and ``numpy_arcs``): a group of
samples is worked on ``(G, T_max + pad, U_max + 2)`` grids one anti-diagonal at a time."""
from __future__ import annotations

import numpy as np


def group_cells(plan, samples, rows):
    """``(T, U, g, t, u)``: the group's frame and label counts (G,) int64, and for each packed
    row of ``rows`` (the group's rows, in order) its group-local sample and lattice point."""
    T = plan.logit_len[samples].astype(np.int64)
    U = plan.target_len[samples].astype(np.int64)
    g = np.repeat(np.arange(len(samples)), T * (U + 1))
    off = rows - plan.offsets[samples][g]
    return T, U, g, off // (U[g] + 1), off % (U[g] + 1)


def diagonal(n: int, Tm: int, Um: int):
    """``(ts, us)``: the points ``t + u = n`` of a ``Tm x (Um + 1)`` lattice."""
    ts = np.arange(max(0, n - Um), min(Tm - 1, n) + 1)
    return ts, n - ts
