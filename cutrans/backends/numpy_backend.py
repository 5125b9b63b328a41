"""NumPy backend: the CPU implementation and the reference for the kernels.

Implements ``backends.base.Backend`` with vectorised NumPy. Temporaries are bounded
by working on blocks of rows of at most ``_BLOCK_ELEMS`` elements, so the fused op's memory stays within its
budget plus a constant.
"""
from __future__ import annotations

import numpy as np

from .. import _status
from .base import RowLayout
from .numpy_arcs import arc_lattice
from .numpy_grid import diagonal, group_cells

_BLOCK_ELEMS = 1 << 18  # elements per internal block: bounds every temporary (~1-2 MB)


def _blocks(n_rows: int, width: int):
    step = max(1, min(4096, _BLOCK_ELEMS // max(1, width)))
    for i0 in range(0, n_rows, step):
        yield i0, min(n_rows, i0 + step)


def row_index(plan, row0: int, n_rows: int):
    """(b, t, u) int64 arrays for rows ``row0 .. row0 + n_rows - 1``."""
    r = np.arange(row0, row0 + n_rows, dtype=np.int64)
    b = np.searchsorted(plan.offsets, r, side="right") - 1
    u1 = plan.target_len[b].astype(np.int64) + 1
    local = r - plan.offsets[b]
    return b, local // u1, local % u1


def _row_starts(layout: RowLayout, row0, b, t, u, i0, i1):
    if layout.packed:
        return (np.arange(i0, i1, dtype=np.int64)) * layout.ld
    return b[i0:i1] * layout.sb + t[i0:i1] * layout.st + u[i0:i1] * layout.su


def _contiguous_block(z, layout: RowLayout, i0, i1, V):
    """A writable (i1-i0, V) view of the block when the layout allows it, else None."""
    if layout.packed and z.ndim == 2 and layout.ld == z.shape[1] and z.flags.c_contiguous:
        return z[i0:i1, :V]
    return None


def _gather(z, layout, b, t, u, i0, i1, V):
    view = _contiguous_block(z, layout, i0, i1, V)
    if view is not None:
        return view
    starts = _row_starts(layout, None, b, t, u, i0, i1)
    return z.reshape(-1)[starts[:, None] + np.arange(V)]


def _scatter(dst, layout, b, t, u, i0, i1, V, values):
    view = _contiguous_block(dst, layout, i0, i1, V)
    if view is not None:
        if view is not values and not np.shares_memory(view, values):
            view[...] = values
        return
    starts = _row_starts(layout, None, b, t, u, i0, i1)
    dst.reshape(-1)[starts[:, None] + np.arange(V)] = values


def _lse(x, cdt):
    x = x.astype(cdt, copy=False)
    m = x.max(axis=1)
    with np.errstate(invalid="ignore"):  # all -inf / NaN rows: reported by the caller
        s = np.exp(x - m[:, None]).sum(axis=1)
    return m + np.log(s)


def _labels(plan, b, u, V):
    """(emits, label) of rows (b, u): whether a readable label y_b[u] exists (u < U_b and
    0 <= y < V; ``check_targets`` reports the others), and the label (0 where not)."""
    emits = u < plan.target_len[b]
    label = plan.targets[b, np.where(emits, u, 0)]
    emits &= (label >= 0) & (label < V)
    return emits, np.where(emits, label, 0)


class NumpyBackend:
    """Reference backend on NumPy arrays (see ``backends.base.Backend``)."""

    name = "numpy"
    xp = np

    # ---------------------------------------------------------------- row ops
    def row_stats(self, z, layout, row0, n_rows, plan, topo, values, rbase=0, lse=None):
        cdt = values.dtype
        n_logits = layout.vocab or z.shape[-1]
        V = topo.vocab(n_logits)
        nb = len(topo.blanks)
        b, t, u = row_index(plan, row0, n_rows)
        for i0, i1 in _blocks(n_rows, n_logits):
            x = _gather(z, layout, b, t, u, i0, i1, n_logits)
            m = _lse(x[:, :V], cdt)
            rows = np.arange(i1 - i0)
            emits, label = _labels(plan, b[i0:i1], u[i0:i1], V)
            out = slice(row0 + i0 - rbase, row0 + i1 - rbase)
            for i, blank in enumerate(topo.blanks):
                values[out, i] = x[:, blank].astype(cdt) - m - topo.sigma
            emit = x[rows, label].astype(cdt) - m - topo.sigma
            if topo.delay_penalty:
                T = plan.logit_len[b[i0:i1]].astype(cdt)
                emit += topo.delay_penalty * (0.5 * (T - 1) - t[i0:i1])
            values[out, nb] = np.where(emits, emit, -np.inf)
            if topo.durations:
                md = _lse(x[:, V:], cdt)
                values[out, nb + 1:] = x[:, V:].astype(cdt) - md[:, None]
            if lse is not None:
                lse[out, 0] = m
                if topo.durations:
                    lse[out, 1] = md

    def row_grad(self, z, grad, layout, row0, n_rows, plan, topo, coefs, scale,
                 fastemit_lambda, clamp, rbase=0, lse=None, coefs2=None):
        cdt = coefs.dtype
        n_logits = layout.vocab or z.shape[-1]
        V = topo.vocab(n_logits)
        nb = len(topo.blanks)
        omega = topo.omega if coefs2 is not None else 0.0
        b, t, u = row_index(plan, row0, n_rows)
        for i0, i1 in _blocks(n_rows, n_logits):
            x = _gather(z, layout, b, t, u, i0, i1, n_logits)
            g = x if x.dtype == cdt else x.astype(cdt)
            if g is x and not np.shares_memory(g, grad):
                g = x.copy()  # never write into the caller's logits
            st = slice(row0 + i0 - rbase, row0 + i1 - rbase)
            c = coefs[st]
            c2 = coefs2[st] if coefs2 is not None else c[:, :2]
            cb = (1.0 - omega) * c[:, :nb]
            cb[:, 0] += omega * c2[:, 0]
            ce = (1.0 + fastemit_lambda) * ((1.0 - omega) * c[:, nb] + omega * c2[:, 1])
            tok = g[:, :V]
            m = _lse(tok, cdt) if lse is None else lse[st, 0]
            np.subtract(tok, m[:, None], out=tok)
            np.exp(tok, out=tok)
            tok *= (cb.sum(axis=1) + ce)[:, None]
            rows = np.arange(i1 - i0)
            for i, blank in enumerate(topo.blanks):
                tok[rows, blank] -= cb[:, i]
            emits, label = _labels(plan, b[i0:i1], u[i0:i1], V)
            tok[rows[emits], label[emits]] -= ce[emits]
            if topo.durations:
                dur = g[:, V:]
                md = _lse(dur, cdt) if lse is None else lse[st, 1]
                cd = (1.0 - omega) * c[:, nb + 1:]
                np.subtract(dur, md[:, None], out=dur)
                np.exp(dur, out=dur)
                dur *= cd.sum(axis=1)[:, None]
                dur -= cd
            if clamp > 0:
                np.clip(g, -clamp, clamp, out=g)
            g *= scale[b[i0:i1]][:, None]
            _scatter(grad, layout, b, t, u, i0, i1, n_logits, g.astype(grad.dtype, copy=False))

    def check_targets(self, plan, vocab, topo, status):
        valid = np.arange(plan.targets.shape[1])[None, :] < plan.target_len[:, None]
        bad = valid & ((plan.targets < 0) | (plan.targets >= vocab))
        blank = valid & ~bad & np.isin(plan.targets, topo.blanks)
        status |= np.int32((_status.BAD_LABEL if bad.any() else 0) |
                           (_status.BLANK_LABEL if blank.any() else 0))

    # ---------------------------------------------------------------- lattice
    def lattice(self, plan, topo, b0, b1, rbase, values, alpha, beta, log_like, coefs,
                need_grad):
        # vectorised over the samples of a group, on padded grids; groups of similar
        # lattice shapes keep the grids O(rows) for skewed lengths
        for samples in _lattice_groups(plan.logit_len[b0:b1], plan.target_len[b0:b1]):
            samples = samples + b0
            rows = np.concatenate([np.arange(plan.offsets[s], plan.offsets[s + 1])
                                   for s in samples])
            with np.errstate(invalid="ignore"):  # NaN inputs: reported by the caller
                if topo.variant == "rnnt":
                    _lattice_group(plan, samples, rows, rbase, values, alpha, beta, log_like,
                                   coefs, need_grad)
                else:
                    arc_lattice(plan, topo, samples, rows, rbase, values, alpha, log_like,
                                coefs, need_grad)

    # ---------------------------------------------------------------- joint
    def joint_forward(self, enc, pred, plan, row0, n_rows, activation, h):
        H = enc.shape[-1]
        for i0, i1, x in _joint_preactivations(enc, pred, plan, row0, n_rows):
            h[i0:i1, :H] = _ACT[activation](x)

    def joint_backward(self, dh, enc, pred, plan, chunk, activation, d_enc, d_pred, out_b0=0,
                       accumulate=False):
        H = enc.shape[-1]
        b, t, u = row_index(plan, chunk.row0, chunk.n)
        b = b - out_b0
        # sums per output row in the compute dtype, stored once (rounded once) at the end
        outs = [(o, np.unique(b * o.shape[1] + k, return_inverse=True))
                for o, k in ((d_enc, t), (d_pred, u)) if o is not None]
        sums = [np.zeros((keys.size, H), dtype=np.float64 if enc.dtype == np.float64
                         else np.float32) for _, (keys, _) in outs]
        for i0, i1, x in _joint_preactivations(enc, pred, plan, chunk.row0, chunk.n):
            g = dh[i0:i1, :H].astype(x.dtype) * _ACT_GRAD[activation](_ACT[activation](x))
            for acc, (_, (_, inv)) in zip(sums, outs):
                _scatter_add_rows(acc, inv[i0:i1], g)
        for acc, (o, (keys, _)) in zip(sums, outs):
            flat = o.reshape(-1, H)
            if accumulate:
                acc += flat[keys].astype(acc.dtype)
            flat[keys] = acc

    # ---------------------------------------------------------------- GEMM
    def prepare_capture(self):
        pass  # no CUDA graphs on the CPU

    def side_stream(self):
        from ._side_stream import InlineSide
        return InlineSide()

    def gemm(self, a, b, out, accumulate=False, tf32=False):
        cdt = np.float64 if out.dtype == np.float64 else np.float32
        if a.dtype == b.dtype == out.dtype == cdt and not tf32:  # no rounding to emulate
            if accumulate:
                out += a @ b
            else:
                np.matmul(a, b, out=out)
            return
        m, k = a.shape
        n = b.shape[1]
        if k > m:  # a long summed dimension (dW = dz^T h): blocks of it, one accumulator
            step = max(1, _BLOCK_ELEMS // (m + n))
            acc = out.astype(cdt) if accumulate else np.zeros(out.shape, cdt)
            for k0 in range(0, k, step):
                acc += _gemm_operand(a[:, k0:k0 + step], cdt, tf32) @ \
                    _gemm_operand(b[k0:k0 + step], cdt, tf32)
            out[...] = acc
            return
        bc = _gemm_operand(b, cdt, tf32)  # the small operand (W), converted once
        step = max(1, _BLOCK_ELEMS // (k + n))
        for i0 in range(0, m, step):  # blocks of output rows
            res = _gemm_operand(a[i0:i0 + step], cdt, tf32) @ bc
            if accumulate:
                res += out[i0:i0 + step].astype(cdt)
            out[i0:i0 + step] = res


def _scatter_add_rows(acc, idx, rows):
    """``acc[idx[i]] += rows[i]`` for every i, repeated indices summed: what
    ``np.add.at(acc, idx, rows)`` does, by segments (np.add.at takes ~5x the time on blocks of
    1024 x 256 float32 rows). The rows are sorted by index (stably: rows of one index keep
    their order) unless ``idx`` is already non-decreasing (a chunk's frames are), each run of
    one index is summed with ``np.add.reduceat`` in ``rows``' dtype, and the sums are added
    with one fancy-indexed ``+=`` (indices unique). The same sums, in another order."""
    if idx.size == 0:
        return
    if (idx[1:] < idx[:-1]).any():  # label slots cycle within a frame: sort them
        order = np.argsort(idx, kind="stable")
        idx, rows = idx[order], rows[order]
    starts = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
    acc[idx[starts]] += np.add.reduceat(rows, starts, axis=0)


_ACT = {0: np.tanh, 1: lambda x: np.maximum(x, 0), 2: lambda x: x}
_ACT_GRAD = {0: lambda h: 1.0 - h * h, 1: lambda h: (h > 0).astype(h.dtype),
             2: lambda h: np.ones_like(h)}


def _joint_preactivations(enc, pred, plan, row0, n_rows):
    """Blocks ``(i0, i1, enc[b, t] + pred[b, u])`` (compute dtype) of a chunk's rows."""
    b, t, u = row_index(plan, row0, n_rows)
    H = enc.shape[-1]
    cdt = np.float64 if enc.dtype == np.float64 else np.float32
    e2, p2 = enc.reshape(-1, H), pred.reshape(-1, H)
    ie = b * enc.shape[1] + t
    ip = b * pred.shape[1] + u
    for i0, i1 in _blocks(n_rows, H):
        yield i0, i1, e2[ie[i0:i1]].astype(cdt) + p2[ip[i0:i1]].astype(cdt)


def _tf32(x):
    """Round float32 to TF32 (10-bit mantissa, round to nearest even)."""
    bits = x.view(np.uint32)
    lsb = (bits >> 13) & 1
    return ((bits + 0xFFF + lsb) & np.uint32(0xFFFFE000)).view(np.float32)


def _gemm_operand(x, cdt, tf32):
    x = x.astype(cdt)
    return _tf32(x) if tf32 and cdt == np.float32 else x


def _lattice_groups(T, U, slack: int = 4, floor: int = 1 << 16):
    """Samples in groups (sorted by T, then U) whose padded grid
    ``n * (T_max + 1) * (U_max + 2)`` stays within ``slack * rows + floor``."""
    T, U = np.asarray(T, np.int64), np.asarray(U, np.int64)
    groups, cur, rows, tm, um = [], [], 0, 0, 0
    for s in np.lexsort((U, T)):
        t, u = int(T[s]), int(U[s])
        n_rows, n_tm, n_um = rows + t * (u + 1), max(tm, t), max(um, u)
        if cur and (len(cur) + 1) * (n_tm + 1) * (n_um + 2) > slack * n_rows + floor:
            groups.append(np.array(cur))
            cur, n_rows, n_tm, n_um = [], t * (u + 1), t, u
        cur.append(int(s))
        rows, tm, um = n_rows, n_tm, n_um
    if cur:
        groups.append(np.array(cur))
    return groups


def _lattice_group(plan, samples, rows, rbase, values, alpha, beta, log_like, coefs,
                   need_grad):
    """The standard RNN-T ``Backend.lattice`` for the samples ``samples`` whose packed rows
    are ``rows`` (element ``rows - rbase`` of the per-row arrays; values/coefs: blank at 0,
    emission at 1)."""
    cdt = values.dtype
    G = len(samples)
    T, U, b, t, u = group_cells(plan, samples, rows)
    Tm, Um = int(T.max()), int(U.max())
    rows = rows - rbase
    # padded (G, Tm + 1, Um + 2) grids, -inf outside each sample's lattice
    pb = np.full((G, Tm + 1, Um + 2), -np.inf, dtype=cdt)
    pe = np.full_like(pb, -np.inf)
    pb[b, t, u] = values[rows, 0]
    pe[b, t, u] = values[rows, 1]
    a = np.full_like(pb, -np.inf)
    a[:, 0, 0] = 0.0
    for n in range(1, Tm + Um):
        ts, us = diagonal(n, Tm, Um)
        from_t = np.where(ts >= 1, a[:, ts - 1, us] + pb[:, ts - 1, us], -np.inf)
        from_u = np.where(us >= 1, a[:, ts, us - 1] + pe[:, ts, us - 1], -np.inf)
        a[:, ts, us] = np.logaddexp(from_t, from_u)
    gi = np.arange(G)
    ll = a[gi, T - 1, U] + pb[gi, T - 1, U]
    log_like[samples] = ll
    alpha[rows] = a[b, t, u]
    if not need_grad:
        return
    final = np.zeros((G, Tm + 1, Um + 2), dtype=bool)
    final[gi, T - 1, U] = True
    bt = np.full_like(pb, -np.inf)
    down = np.full_like(pb, -np.inf)  # beta(t+1, u), with beta(T_b, U_b) = 0
    for n in range(Tm + Um - 1, -1, -1):
        ts, us = diagonal(n, Tm, Um)
        d = np.where(final[:, ts, us], 0.0, bt[:, ts + 1, us])
        down[:, ts, us] = d
        bt[:, ts, us] = np.logaddexp(d + pb[:, ts, us], bt[:, ts, us + 1] + pe[:, ts, us])
    beta[rows] = bt[b, t, u]
    llr = ll[b]
    with np.errstate(invalid="ignore"):  # -inf - -inf for impossible samples (reported later)
        cb = np.exp(a[b, t, u] + pb[b, t, u] + down[b, t, u] - llr)
        ce = np.exp(a[b, t, u] + pe[b, t, u] + bt[b, t, u + 1] - llr)
        coefs[rows, 0] = cb
        coefs[rows, 1] = ce
