"""The NumPy reference of the general lattice (``cutrans._topology``): any arc set.

Samples are grouped (``numpy_backend._lattice_groups``) and worked on padded grids
``(G, T_max + pad, U_max + 2)`` (``numpy_grid``), one anti-diagonal ``n = t + u`` at a
time: every arc moves to a later diagonal (``dt + du >= 1``), so a diagonal needs only
earlier ones (alpha) or later ones (beta), and its cells are independent -- vectorised over
cells and samples.
"""
from __future__ import annotations

import numpy as np

from .numpy_grid import diagonal, group_cells


def arc_lattice(plan, topo, samples, rows, rbase, values, alpha, log_like, coefs,
                need_grad):
    """``Backend.lattice`` of the general topologies for ``samples`` (rows ``rows``).

    ``values``/``coefs``: (S, W) per-row arrays (row ``rows - rbase``), may alias;
    ``alpha`` (S,) gets alpha; ``log_like`` (B,) the log-likelihoods.
    """
    cdt = values.dtype
    arcs = topo.arcs()
    pad = topo.max_dt
    G = len(samples)
    T, U, g, t, u = group_cells(plan, samples, rows)
    Tm, Um = int(T.max()), int(U.max())
    rel = rows - rbase
    W = values.shape[1]
    # value grids, -inf outside the lattices; alpha stored at (t + pad, u + 1) so that the
    # sources (t - dt, u - du) of every cell are inside the grid
    val = np.full((W, G, Tm + pad, Um + 2), -np.inf, dtype=cdt)
    val[:, g, t + pad, u + 1] = values[rel].T
    a = np.full((G, Tm + pad, Um + 2), -np.inf, dtype=cdt)
    a[:, pad, 1] = 0.0

    def weight(arc, ts, us):  # weight of the arc from cells (ts, us), padded coordinates
        w = val[arc.w1][:, ts, us]
        return w + val[arc.w2][:, ts, us] if arc.w2 >= 0 else w

    for n in range(1, Tm + Um):
        ts, us = diagonal(n, Tm, Um)
        acc = np.full((G, ts.size), -np.inf, dtype=cdt)
        for arc in arcs:
            st, su = ts - arc.dt + pad, us - arc.du + 1
            acc = np.logaddexp(acc, a[:, st, su] + weight(arc, st, su))
        a[:, ts + pad, us + 1] = acc
    gi = np.arange(G)
    ll = np.full(G, -np.inf, dtype=cdt)
    for arc in arcs:  # end arcs landing exactly on (T_b, U_b)
        if arc.can_end:
            st, su = T - arc.dt + pad, U - arc.du + 1
            ll = np.logaddexp(ll, a[gi, st, su] + weight(arc, st, su)[gi, gi])
    log_like[samples] = ll
    alpha[rel] = a[g, t + pad, u + 1]
    if not need_grad:
        return
    # beta(t, u) at (t, u) of a grid with room for every destination
    bt = np.full((G, Tm + pad + 1, Um + 2), -np.inf, dtype=cdt)
    post = {}
    for n in range(Tm + Um - 1, -1, -1):
        ts, us = diagonal(n, Tm, Um)
        inside = (ts[None, :] < T[:, None]) & (us[None, :] <= U[:, None])
        acc = np.full((G, ts.size), -np.inf, dtype=cdt)
        for k, arc in enumerate(arcs):
            w = weight(arc, ts + pad, us + 1)
            dt, du = ts + arc.dt, us + arc.du
            end = arc.can_end & (dt[None, :] == T[:, None]) & (du[None, :] == U[:, None])
            into = (dt[None, :] < T[:, None]) & (du[None, :] <= U[:, None])
            dest = np.where(end, 0.0, np.where(into, bt[:, np.minimum(dt, Tm + pad),
                                                         np.minimum(du, Um + 1)], -np.inf))
            post[k, n] = w + dest  # log of the arc's paths to the end, from (ts, us)
            acc = np.logaddexp(acc, post[k, n])
        bt[:, ts, us] = np.where(inside, acc, -np.inf)
    out = np.zeros((W, G, Tm + pad, Um + 2), dtype=cdt)
    llg = ll[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        for n in range(Tm + Um):
            ts, us = diagonal(n, Tm, Um)
            base = a[:, ts + pad, us + 1] - llg
            for k, arc in enumerate(arcs):
                p = np.exp(base + post[k, n])
                out[arc.w1][:, ts + pad, us + 1] += p
                if arc.w2 >= 0:
                    out[arc.w2][:, ts + pad, us + 1] += p
    coefs[rel] = out[:, g, t + pad, u + 1].T
