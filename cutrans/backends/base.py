"""The backend interface: the few operations the one orchestration needs.

Every backend (NumPy reference, CuPy kernels, CPU emulation of the same kernels)
implements these methods with identical semantics. Arrays are arrays of the
backend's namespace ``xp`` (numpy or cupy). Notation, for sample ``b``:

* ``T_b = plan.logit_len[b]`` frames, ``U_b = plan.target_len[b]`` labels;
* the lattice of sample ``b`` has ``T_b * (U_b + 1)`` points, stored as rows of the
  *packed row space*: row ``r = plan.offsets[b] + t * (U_b + 1) + u``;
* ``R = plan.offsets[B]`` rows in total; a *chunk* is a contiguous row range
  ``[row0, row0 + n_rows)`` (it may split samples or span several).

Per-row arrays (``values`` and ``coefs`` (S, W), ``lse`` (S, G), ``alpha``, ``beta``
(S,)) have the compute dtype (float32, or float64 for float64 inputs) and hold a
contiguous range of rows starting at ``rbase`` (row ``r`` is row ``r - rbase``); ``W``
values per row (``Topology.width``: the blanks, the emission, TDT's durations; 2 for the
standard RNN-T), ``G`` logsumexps (``Topology.lse_width``: 2 for TDT, else 1).
Kernel-side row lookup: ``b`` = largest index with ``offsets[b] <= r``.

Precision: logits and joint activations are stored in the storage dtype (the inputs'
dtype); all math (logsumexp, lattice, gradient, GEMM accumulation) runs in the compute
dtype. This is the precision ``torch.autocast`` gives the batched computation.

Logits addressing (``RowLayout``): a row's V logits are contiguous; their first
element is at ``(r - row0) * ld`` (``ld >= V``) when ``layout.packed`` else at
``b * sb + t * st + u * su`` (element strides of a padded ``(B, T, U+1, V)`` array).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

ACTIVATIONS = {"tanh": 0, "relu": 1, "identity": 2}


@dataclass(frozen=True)
class RowLayout:
    """Where row ``r``'s logits start, in elements (see module docstring)."""

    packed: bool
    ld: int = 0  # packed: elements between consecutive rows
    vocab: int = 0  # logits per row (V); 0: the array's last dimension
    sb: int = 0  # padded: element strides over (b, t, u)
    st: int = 0
    su: int = 0


class DevicePlan(Protocol):
    """Device-side copy of the row plan (see ``cutrans._plan.RowPlan``)."""

    offsets: Any  # (B + 1,) int64, exclusive cumsum of T_b * (U_b + 1)
    frame_offsets: Any  # (B + 1,) int64, exclusive cumsum of T_b
    label_offsets: Any  # (B + 1,) int64, exclusive cumsum of U_b + 1
    logit_len: Any  # (B,) int32, T_b
    target_len: Any  # (B,) int32, U_b
    targets: Any  # (B, max(1, U_max)) int32, labels (only u < U_b are read)
    batch: int  # B
    rows: int  # R
    max_diag: int  # longest anti-diagonal: max_b min(T_b, U_b + 1) (host int)


class Backend(Protocol):
    xp: Any  # the array namespace: numpy or cupy
    name: str

    def row_stats(self, z, layout: RowLayout, row0: int, n_rows: int, plan: DevicePlan,
                  topo, values, rbase: int = 0, lse=None) -> None:
        """The per-row values of topology ``topo`` (``cutrans._topology.Topology``), one read
        of each logit.

        ``z``: logits holding rows ``[row0, row0+n_rows)`` addressed by ``layout``
        (any storage dtype: float16, bfloat16, float32, float64); ``n_logits`` per row
        (``layout.vocab`` or z's last dimension), of which the first ``V = topo.vocab(
        n_logits)`` are tokens and the rest TDT duration logits. With
        ``m(r) = logsumexp_{k < V} z[r, k]`` and ``md(r)`` that of the duration logits,
        writes row ``e = r - rbase`` of ``values`` (S, W), ``W = topo.width``:
        ``values[e, i] = z[r, blanks[i]] - m - sigma`` for each blank id ``i``;
        ``values[e, nb] = z[r, y_b[u]] - m - sigma (+ delay_penalty ((T_b-1)/2 - t))`` for
        ``u < U_b`` (``-inf`` at ``u = U_b``); ``values[e, nb+1+n] = z[r, V+n] - md`` (TDT);
        and ``lse[e] = (m[, md])`` (S, G) if ``lse`` is given. Compute dtype throughout.
        """

    def check_targets(self, plan: DevicePlan, vocab: int, topo, status) -> None:
        """``status |= BAD_LABEL`` if a label within ``target_len`` lies outside
        ``[0, vocab)``, ``|= BLANK_LABEL`` if one is a blank id of ``topo``
        (``cutrans._status``); ``status``: int32 array of shape (). Row ops never read a
        label outside ``[0, vocab)`` (its row has no emission)."""

    def lattice(self, plan: DevicePlan, topo, b0: int, b1: int, rbase: int, values, alpha,
                beta, log_like, coefs, need_grad: bool) -> None:
        """Forward (and backward) recursions of ``topo``'s lattice for samples ``[b0, b1)``
        and the gradient coefficients.

        Per-row arrays hold rows ``[rbase, ...)`` (row ``r`` is element ``r - rbase``):
        input ``values`` (S, W) (``row_stats``; the first ``topo.width`` columns are read:
        TDT's mixed-in RNN-T reads columns 0, 1 of wider rows), workspace ``alpha``,
        ``beta`` (S,). Writes ``log_like[b]`` (``log_like`` is (B,)), the log-sum of the
        weights of every complete path (``cutrans._topology``; standard RNN-T:
        ``alpha(T_b-1, U_b) + values(T_b-1, U_b, blank)``). If ``need_grad``, also writes
        ``coefs`` (S, >= W): column ``w`` of row ``r`` is the posterior mass of the arcs
        leaving ``r`` whose weight uses value ``w`` (0 where none can lead to the end).
        ``coefs`` may alias ``values`` (each row's coefficients depend on its own values).
        """

    def row_grad(self, z, grad, layout: RowLayout, row0: int, n_rows: int, plan: DevicePlan,
                 topo, coefs, scale, fastemit_lambda: float, clamp: float, rbase: int = 0,
                 lse=None, coefs2=None) -> None:
        """Gradient of the per-sample losses w.r.t. the logits of a chunk.

        ``z`` as in ``row_stats``; ``grad`` has z's dtype and layout and may be ``z``
        itself (in place). ``scale`` (B,) compute dtype: upstream gradient per sample.
        With ``p = softmax(z[r, :V])`` (``lse[r - rbase]`` if given: one read of the row),
        ``c = coefs[r - rbase]``, ``omega = topo.omega`` when ``coefs2`` (TDT's mixed-in
        RNN-T's coefficients (S, 2)) is given, else 0, ``k = 1 - omega``:
        ``cb_i = k c[i] (+ omega coefs2[0] for i = 0)``,
        ``ce = (1 + lambda)(k c[nb] + omega coefs2[1])``;
        ``g[j] = (sum_i cb_i + ce) p[j] - sum_i cb_i [j == blanks[i]] - ce [j == y_b[u]]``
        for the tokens, and for TDT's duration logits
        ``g[V+n] = (sum_m k c[nb+1+m]) pd[n] - k c[nb+1+n]`` (``pd``: their softmax);
        if ``clamp > 0``: ``g = clip(g, -clamp, clamp)``; then ``grad[r] = scale[b] * g``.
        """

    def joint_forward(self, enc, pred, plan: DevicePlan, row0: int, n_rows: int,
                      activation: int, h) -> None:
        """``h[i, :H] = act(enc[b, t] + pred[b, u])`` for row ``r = row0 + i``.

        ``enc`` (B, T_max, H) and ``pred`` (B, U_max+1, H), contiguous, storage dtype;
        ``h`` (n_rows, ldh >= H), storage dtype, C-contiguous (columns ``>= H`` untouched);
        math in the compute dtype, rounded once to the storage dtype.
        ``activation``: ACTIVATIONS code.
        """

    def joint_backward(self, dh, enc, pred, plan: DevicePlan, chunk, activation: int,
                       d_enc, d_pred, out_b0: int = 0, accumulate: bool = False) -> None:
        """Back through the activation and the broadcast add, for one chunk.

        ``dh`` (n, ldh), storage dtype: dLoss/dh of the chunk's rows (first H columns).
        With ``dpre = dh * act'(act(enc[b, t] + pred[b, u]))`` (recomputed, compute dtype):
        ``d_enc[b - out_b0, t] = sum_u dpre`` and ``d_pred[b - out_b0, u] = sum_t dpre``
        over the chunk's rows (``+=`` the output when ``accumulate``), stored in the
        output's dtype (storage dtype, or float32 accumulators for 16-bit storage).
        ``chunk``: the ``_plan.Chunk`` (rows, frames, label slots). Either output may be
        None (skipped). Deterministic: fixed summation order, no float atomics.
        """

    def prepare_capture(self) -> None:
        """Get ready for calls captured in a CUDA graph (``checks="device"`` calls run it
        first, outside or inside a capture): CuPy makes the capture route's cuBLAS handle
        when no capture is in progress (``_cublas.prepare_capture``); CPU backends do
        nothing."""

    def side_stream(self):
        """The pipelined one pass's side stream for the lattices (``launch(slot, fn)``,
        ``wait(slot)``: ``backends._side_stream``): CuPy's per thread and device, None while
        a CUDA graph is captured; CPU backends run ``fn`` inline (same results and order)."""

    def gemm(self, a, b, out, accumulate: bool = False, tf32: bool = False) -> None:
        """``out = a @ b`` (``out += a @ b`` when ``accumulate``) for 2-D arrays.

        ``a``, ``b``: storage dtype, row-major with a leading dimension or transposed views
        of such; ``out``: row-major with a leading dimension, storage or compute dtype.
        Products and sums in float32 (float64 for float64), rounded once to ``out``'s
        dtype; ``tf32``: float32 inputs may be rounded to TF32 (10-bit mantissa) first.
        """
