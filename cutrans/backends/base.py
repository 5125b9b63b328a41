"""The backend interface: the few operations the one orchestration needs.

Every backend (NumPy reference, CuPy kernels, CPU emulation of the same kernels)
implements these methods with identical semantics. Arrays are arrays of the
backend's namespace ``xp`` (numpy or cupy). Notation, for sample ``b``:

* ``T_b = plan.logit_len[b]`` frames, ``U_b = plan.target_len[b]`` labels;
* the lattice of sample ``b`` has ``T_b * (U_b + 1)`` points, stored as rows of the
  *packed row space*: row ``r = plan.offsets[b] + t * (U_b + 1) + u``;
* ``R = plan.offsets[B]`` rows in total; a *chunk* is a contiguous row range
  ``[row0, row0 + n_rows)`` (it may split samples or span several).

Per-row arrays (``lp_blank``, ``lp_emit``, ``coef_blank``, ``coef_emit``, ``alpha``,
``beta``) have shape ``(R,)`` and the compute dtype (float32, or float64 for float64
inputs). Kernel-side row lookup: ``b`` = largest index with ``offsets[b] <= r``.

Logits addressing (``RowLayout``): a row's V logits are contiguous; their first
element is at ``(r - row0) * ld`` when ``layout.packed`` else at
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
    sb: int = 0  # padded: element strides over (b, t, u)
    st: int = 0
    su: int = 0


class DevicePlan(Protocol):
    """Device-side copy of the row plan (see ``cutrans._plan.RowPlan``)."""

    offsets: Any  # (B + 1,) int64, exclusive cumsum of T_b * (U_b + 1)
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
                  blank: int, lp_blank, lp_emit) -> None:
        """Log-probabilities of blank and of the next label, one pass over V.

        ``z``: logits holding rows ``[row0, row0+n_rows)`` addressed by ``layout``
        (any storage dtype: float16, bfloat16, float32, float64).
        Writes, for those rows: ``lp_blank[r] = z[r, blank] - lse(r)`` and
        ``lp_emit[r] = z[r, y_b[u]] - lse(r)`` for ``u < U_b`` (``-inf`` at ``u = U_b``),
        where ``lse(r) = logsumexp_k z[r, k]`` computed in the compute dtype.
        """

    def lattice(self, plan: DevicePlan, lp_blank, lp_emit, alpha, beta,
                log_like, coef_blank, coef_emit, need_grad: bool) -> None:
        """Alpha/beta recursions for all samples and the gradient coefficients.

        Inputs ``lp_blank, lp_emit`` (R,). Workspace ``alpha, beta`` (R,).
        Writes ``log_like[b] = alpha(T_b-1, U_b) + lp_blank(T_b-1, U_b)`` (B,).
        If ``need_grad``, also computes beta and, for every row,
        ``coef_blank[r] = exp(alpha + lp_blank + beta(t+1, u) - LL)`` and
        ``coef_emit[r] = exp(alpha + lp_emit + beta(t, u+1) - LL)`` (0 at ``u = U_b``),
        with ``beta(T_b, U_b) := 0`` and other out-of-lattice betas ``-inf``.
        ``coef_blank``/``coef_emit`` may alias ``lp_blank``/``lp_emit`` (each row's
        coefficients depend on its own lp values only).
        """

    def row_grad(self, z, grad, layout: RowLayout, row0: int, n_rows: int, plan: DevicePlan,
                 blank: int, coef_blank, coef_emit, scale, fastemit_lambda: float,
                 clamp: float) -> None:
        """Gradient of the per-sample losses w.r.t. the logits of a chunk.

        ``z`` as in ``row_stats``; ``grad`` has z's dtype and layout and may be ``z``
        itself (in place). ``scale`` (B,) compute dtype: upstream gradient per sample.
        With ``p = softmax(z[r])``, ``cb = coef_blank[r]``, ``ce = (1+lambda) coef_emit[r]``:
        ``g[k] = (cb + ce) p[k] - cb [k == blank] - ce [k == y_b[u]]``;
        if ``clamp > 0``: ``g = clip(g, -clamp, clamp)``; then ``grad[r] = scale[b] * g``.
        """

    def joint_forward(self, enc, pred, plan: DevicePlan, row0: int, n_rows: int,
                      activation: int, h) -> None:
        """``h[i] = act(enc[b, t] + pred[b, u])`` for row ``r = row0 + i``.

        ``enc`` (B, T_max, H) and ``pred`` (B, U_max+1, H), contiguous, storage dtype;
        ``h`` (n_rows, H) compute dtype. ``activation``: ACTIVATIONS code.
        """

    def joint_backward(self, dh, h, plan: DevicePlan, row0: int, n_rows: int,
                       activation: int, d_enc, d_pred) -> None:
        """Back through the activation and the broadcast add, accumulating.

        ``dh`` (n_rows, H) = dLoss/dh, overwritten with ``dpre = dh * act'(h)``.
        ``d_enc[b, t] += sum_u dpre`` and ``d_pred[b, u] += sum_t dpre`` over the chunk's
        rows; ``d_enc`` (B, T_max, H), ``d_pred`` (B, U_max+1, H), compute dtype.
        Deterministic: fixed summation order, no float atomics.
        """
