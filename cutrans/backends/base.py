"""The backend interface: the few operations the one orchestration needs.

Every backend (NumPy reference, CuPy kernels, CPU emulation of the same kernels)
implements these methods with identical semantics. Arrays are arrays of the
backend's namespace ``xp`` (numpy or cupy). Notation, for sample ``b``:

* ``T_b = plan.logit_len[b]`` frames, ``U_b = plan.target_len[b]`` labels;
* the lattice of sample ``b`` has ``T_b * (U_b + 1)`` points, stored as rows of the
  *packed row space*: row ``r = plan.offsets[b] + t * (U_b + 1) + u``;
* ``R = plan.offsets[B]`` rows in total; a *chunk* is a contiguous row range
  ``[row0, row0 + n_rows)`` (it may split samples or span several).

Per-row arrays (``lp_blank``, ``lp_emit``, ``lse``, ``coef_blank``, ``coef_emit``,
``alpha``, ``beta``) have the compute dtype (float32, or float64 for float64 inputs) and
hold a contiguous range of rows starting at ``rbase`` (row ``r`` is element
``r - rbase``). Kernel-side row lookup: ``b`` = largest index with ``offsets[b] <= r``.

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
                  blank: int, lp_blank, lp_emit, rbase: int = 0, lse=None) -> None:
        """Log-probabilities of blank and of the next label, one read of each logit.

        ``z``: logits holding rows ``[row0, row0+n_rows)`` addressed by ``layout``
        (any storage dtype: float16, bfloat16, float32, float64).
        Writes, for those rows (element ``r - rbase`` of each per-row array):
        ``lp_blank[r] = z[r, blank] - lse(r)`` and ``lp_emit[r] = z[r, y_b[u]] - lse(r)``
        for ``u < U_b`` (``-inf`` at ``u = U_b``), and ``lse[r]`` if ``lse`` is given,
        where ``lse(r) = logsumexp_k z[r, k]`` computed in the compute dtype.
        """

    def check_targets(self, plan: DevicePlan, vocab: int, blank: int, status) -> None:
        """``status |= BAD_LABEL`` if a label within ``target_len`` lies outside
        ``[0, vocab)``, ``|= BLANK_LABEL`` if one is ``blank`` (``cutrans._status``);
        ``status``: int32 array of shape (). Row ops never read a label outside
        ``[0, vocab)`` (its row has no emission)."""

    def lattice(self, plan: DevicePlan, b0: int, b1: int, rbase: int, lp_blank, lp_emit,
                alpha, beta, log_like, coef_blank, coef_emit, need_grad: bool) -> None:
        """Alpha/beta recursions for samples ``[b0, b1)`` and the gradient coefficients.

        Per-row arrays hold rows ``[rbase, ...)`` (row ``r`` is element ``r - rbase``):
        inputs ``lp_blank, lp_emit``, workspace ``alpha, beta``. Writes
        ``log_like[b] = alpha(T_b-1, U_b) + lp_blank(T_b-1, U_b)`` (``log_like`` is (B,)).
        If ``need_grad``, also computes beta and, for every row,
        ``coef_blank[r] = exp(alpha + lp_blank + beta(t+1, u) - LL)`` and
        ``coef_emit[r] = exp(alpha + lp_emit + beta(t, u+1) - LL)`` (0 at ``u = U_b``),
        with ``beta(T_b, U_b) := 0`` and other out-of-lattice betas ``-inf``.
        ``coef_blank``/``coef_emit`` may alias ``lp_blank``/``lp_emit`` (each row's
        coefficients depend on its own lp values only).
        """

    def row_grad(self, z, grad, layout: RowLayout, row0: int, n_rows: int, plan: DevicePlan,
                 blank: int, coef_blank, coef_emit, scale, fastemit_lambda: float,
                 clamp: float, rbase: int = 0, lse=None) -> None:
        """Gradient of the per-sample losses w.r.t. the logits of a chunk.

        ``z`` as in ``row_stats``; ``grad`` has z's dtype and layout and may be ``z``
        itself (in place). ``scale`` (B,) compute dtype: upstream gradient per sample.
        With ``p = softmax(z[r])`` (``lse[r - rbase]`` if given: one read of the row),
        ``cb = coef_blank[r]``, ``ce = (1+lambda) coef_emit[r]``:
        ``g[k] = (cb + ce) p[k] - cb [k == blank] - ce [k == y_b[u]]``;
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

    def gemm(self, a, b, out, accumulate: bool = False, tf32: bool = False) -> None:
        """``out = a @ b`` (``out += a @ b`` when ``accumulate``) for 2-D arrays.

        ``a``, ``b``: storage dtype, row-major with a leading dimension or transposed views
        of such; ``out``: row-major with a leading dimension, storage or compute dtype.
        Products and sums in float32 (float64 for float64), rounded once to ``out``'s
        dtype; ``tf32``: float32 inputs may be rounded to TF32 (10-bit mantissa) first.
        """
