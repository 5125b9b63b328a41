"""Public, framework-free API on NumPy (CPU) or CuPy (GPU) arrays.

Two operations, each as one call and as a forward/backward pair (for autograd adapters):

* ``rnnt_loss`` — the exact RNN-T loss on given logits, fused log-softmax.
* ``transducer_loss`` — the fused, sample-wise joint network + output layer + RNN-T loss
  of Braun et al. (2022): never builds a (B, T, U+1, V) or (B, T, U+1, H) tensor.

Math (0-based targets ``y``, ``lp = log_softmax(z)``)::

    alpha(0,0) = 0
    alpha(t,u) = logaddexp(alpha(t-1,u) + lp_blank(t-1,u), alpha(t,u-1) + lp_emit(t,u-1))
    loss_b     = -(1 + fastemit_lambda) * (alpha(T_b-1,U_b) + lp_blank(T_b-1,U_b))

FastEmit follows NeMo/warprnnt-numba: the emission terms of the gradient get weight
``1 + lambda`` and the reported loss is ``(1 + lambda) * (-log P(y|x))``.
``clamp`` clips dLoss/dlogits to ``[-clamp, clamp]`` before the upstream scaling
(torchaudio semantics).

Host synchronisation (CuPy arrays): the forwards copy ``*_lengths`` and ``targets`` to the
host (the row plan and the validation need them) and check the float inputs for NaN/inf
(one ``bool(isfinite(x).all())`` per input). Nothing else synchronises: the kernels and
the cuBLAS GEMMs are enqueued on the current CuPy stream, backwards included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from . import _orchestrate as orch
from . import _validate as v
from ._plan import make_plan
from .backends import ACTIVATIONS, get_backend

DEFAULT_WORKSPACE_BYTES = 512 << 20  # 512 MiB of chunk workspace for the fused op


def _common_scalars(blank, vocab, clamp, fastemit_lambda):
    return (v.normalize_blank(blank, vocab), v.normalize_clamp(clamp),
            v.check_scalar("fastemit_lambda", fastemit_lambda))


def _reduce(losses, reduction: str):
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def _upstream(xp, batch: int, reduction: str, dtype):
    """dReduced/dLoss_b: 1/B for mean, 1 otherwise (``none`` means d sum)."""
    return xp.full(batch, 1.0 / batch if reduction == "mean" else 1.0, dtype=dtype)


# ---------------------------------------------------------------------- logits
def rnnt_loss_forward(logits, targets, logit_lengths, target_lengths, *, blank: int = 0,
                      clamp: float | None = None, fastemit_lambda: float = 0.0,
                      layout: str = "padded", need_grad: bool = True, backend=None):
    """Per-sample RNN-T losses on logits, and the context for ``rnnt_loss_backward``.

    Args:
        logits: ``(B, T, U+1, V)`` if ``layout="padded"``; ``(sum_b T_b (U_b+1), V)`` if
            ``layout="packed"`` (rows ordered by sample, then t, then u).
        targets: ``(B, U)`` int32/int64 labels, padded; only ``u < target_lengths[b]`` read.
        logit_lengths: ``(B,)`` frames ``T_b`` (1 <= T_b <= T).
        target_lengths: ``(B,)`` labels ``U_b`` (0 <= U_b <= U).
    Returns:
        ``(losses, ctx)``: losses ``(B,)`` in the compute dtype (float32, float64 for
        float64 logits); ``ctx`` is None unless ``need_grad``.
    """
    v.check_choice("layout", layout, ("padded", "packed"))
    packed = layout == "packed"
    v.check_array("logits", logits, kind="float", ndim=2 if packed else 4,
                  shape_doc="(rows, V)" if packed else "(B, T, U+1, V)")
    v.check_array("targets", targets, kind="index", ndim=2, shape_doc="(B, U)")
    B = targets.shape[0]
    v.check_batch("targets", B)
    if not packed:
        v.check_dim("logits", logits, 0, B, "batch size B of targets")
        v.check_dim("logits", logits, 2, targets.shape[1] + 1, "U+1, from targets' width U")
    T_max = logits.shape[1] if not packed else logits.shape[0]
    t_len = v.check_lengths("logit_lengths", logit_lengths, B, 1, T_max, "frame counts")
    u_len = v.check_lengths("target_lengths", target_lengths, B, 0, targets.shape[1],
                            "label counts")
    V = logits.shape[-1]
    blank, clamp, lam = _common_scalars(blank, V, clamp, fastemit_lambda)
    plan = make_plan(t_len, u_len)
    if packed and logits.shape[0] != plan.rows:
        raise ValueError(f"logits: expected {plan.rows} rows (sum of T_b * (U_b + 1)) for the "
                         f"packed layout, got shape {tuple(logits.shape)}")
    host_targets = v.to_host(targets)
    v.check_targets(host_targets, u_len, V, blank)
    be = get_backend(backend, logits)
    v.check_array_module("logits", logits, be)  # finiteness: checked on the row statistics
    logits = be.xp.ascontiguousarray(logits)
    return orch.logits_forward(be, logits, be.xp.asarray(host_targets), plan, packed=packed,
                               blank=blank, fastemit_lambda=lam, clamp=clamp,
                               need_grad=need_grad)


def rnnt_loss_backward(ctx, grad_losses):
    """dLoss/dlogits for upstream gradients ``grad_losses`` ``(B,)``; logits' shape and dtype."""
    return orch.logits_backward(ctx, grad_losses)


def rnnt_loss(logits, targets, logit_lengths, target_lengths, *, blank: int = 0,
              reduction: str = "mean", clamp: float | None = None,
              fastemit_lambda: float = 0.0, layout: str = "padded", return_grad: bool = False,
              backend=None):
    """RNN-T loss on logits (torchaudio names and ``reduction``; see ``rnnt_loss_forward``).

    ``reduction``: ``"none"`` -> ``(B,)``, ``"mean"`` -> mean over the batch, ``"sum"``.
    With ``return_grad=True`` returns ``(loss, grad_logits)``, the gradient of the reduced
    loss (of the sum of the losses for ``"none"``).
    """
    v.check_choice("reduction", reduction, v.REDUCTIONS)
    losses, ctx = rnnt_loss_forward(logits, targets, logit_lengths, target_lengths, blank=blank,
                                    clamp=clamp, fastemit_lambda=fastemit_lambda, layout=layout,
                                    need_grad=return_grad, backend=backend)
    loss = _reduce(losses, reduction)
    if not return_grad:
        return loss
    xp = ctx.backend.xp
    return loss, rnnt_loss_backward(ctx, _upstream(xp, losses.shape[0], reduction, losses.dtype))


# ---------------------------------------------------------------------- fused
class TransducerGrads(NamedTuple):
    """Gradients w.r.t. enc (B,T,H), pred (B,U+1,H), weight (V,H), bias (V,), input dtypes."""

    enc: Any
    pred: Any
    weight: Any
    bias: Any


@dataclass
class TransducerOutput:
    loss: Any  # reduced loss (or (B,) for reduction="none")
    grads: TransducerGrads | None


def transducer_forward(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *,
                       activation: str = "tanh", blank: int = 0, clamp: float | None = None,
                       fastemit_lambda: float = 0.0,
                       max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                       sample_wise: bool = False, need_grad: bool = True,
                       allow_tf32: bool = False, backend=None):
    """Per-sample losses of the fused joint network + RNN-T, and the backward context.

    ``z(b,t,u) = act(enc[b,t] + pred[b,u]) @ weight.T + bias`` is computed in row chunks
    of the packed lattice whose workspace (h, dh: H floats; z: V floats per row, plus a
    (V, H) buffer) fits ``max_workspace_bytes``; ``sample_wise=True`` keeps each chunk
    inside one utterance (the seed paper's schedule).

    Args:
        enc: ``(B, T, H)`` projected encoder output; pred: ``(B, U+1, H)`` projected
            prediction-network output; weight: ``(V, H)``; bias: ``(V,)``; all one dtype.
        targets: ``(B, U)`` labels; enc_lengths ``(B,)`` in [1, T]; target_lengths in [0, U].
        activation: ``"tanh"`` | ``"relu"`` | ``"identity"``.
        allow_tf32: float32 inputs only: let the GEMMs round their inputs to TF32 (tensor
            cores, ~10-bit mantissa). Off by default: float32 is exact float32.
    Returns:
        ``(losses (B,), ctx)``; ctx is None unless ``need_grad``.
    """
    v.check_array("enc", enc, kind="float", ndim=3, shape_doc="(B, T, H)")
    v.check_array("pred", pred, kind="float", ndim=3, shape_doc="(B, U+1, H)")
    v.check_array("weight", weight, kind="float", ndim=2, shape_doc="(V, H)")
    v.check_array("bias", bias, kind="float", ndim=1, shape_doc="(V,)")
    v.check_array("targets", targets, kind="index", ndim=2, shape_doc="(B, U)")
    for name, x in (("pred", pred), ("weight", weight), ("bias", bias)):
        if x.dtype != enc.dtype:
            raise TypeError(f"{name}: expected the dtype of enc ({v.dtype_name(enc.dtype)}), "
                            f"got {v.dtype_name(x.dtype)}")
    B, T, H = enc.shape
    v.check_batch("enc", B)
    v.check_dim("pred", pred, 0, B, "batch size B of enc")
    v.check_dim("pred", pred, 2, H, "hidden size H of enc")
    v.check_dim("pred", pred, 1, targets.shape[1] + 1, "U+1, from targets' width U")
    v.check_dim("targets", targets, 0, B, "batch size B of enc")
    v.check_dim("weight", weight, 1, H, "hidden size H of enc")
    v.check_dim("bias", bias, 0, weight.shape[0], "vocabulary size V of weight")
    act = ACTIVATIONS[v.check_choice("activation", activation, tuple(ACTIVATIONS))]
    t_len = v.check_lengths("enc_lengths", enc_lengths, B, 1, T, "frame counts")
    u_len = v.check_lengths("target_lengths", target_lengths, B, 0, targets.shape[1],
                            "label counts")
    V = weight.shape[0]
    blank, clamp, lam = _common_scalars(blank, V, clamp, fastemit_lambda)
    if isinstance(max_workspace_bytes, bool) or not isinstance(max_workspace_bytes, int):
        raise TypeError(f"max_workspace_bytes: expected an int, got "
                        f"{type(max_workspace_bytes).__name__}")
    if not isinstance(allow_tf32, bool):
        raise TypeError(f"allow_tf32: expected a bool, got {type(allow_tf32).__name__}")
    host_targets = v.to_host(targets)
    v.check_targets(host_targets, u_len, V, blank)
    be = get_backend(backend, enc)
    xp = be.xp
    for name, x in (("enc", enc), ("pred", pred), ("weight", weight), ("bias", bias)):
        v.check_array_module(name, x, be)
        v.check_finite(name, x, xp)
    enc, pred, weight, bias = (xp.ascontiguousarray(x) for x in (enc, pred, weight, bias))
    return orch.fused_forward(be, enc, pred, weight, bias, xp.asarray(host_targets),
                              make_plan(t_len, u_len), activation=act, blank=blank,
                              fastemit_lambda=lam, clamp=clamp, need_grad=need_grad,
                              max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise)


def transducer_backward(ctx, grad_losses, needs=(True, True, True, True)) -> TransducerGrads:
    """Gradients for upstream per-sample gradients ``grad_losses`` ``(B,)``.

    ``needs``: flags for (enc, pred, weight, bias); unneeded gradients come back as None
    and their work (dW GEMM, dh GEMM + joint backward) is skipped.
    """
    return TransducerGrads(*orch.fused_backward(ctx, grad_losses, needs))


def transducer_loss(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *,
                    activation: str = "tanh", blank: int = 0, reduction: str = "mean",
                    clamp: float | None = None, fastemit_lambda: float = 0.0,
                    max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                    sample_wise: bool = False, compute_grad: bool = True,
                    allow_tf32: bool = False, backend=None) -> TransducerOutput:
    """Fused loss and (if ``compute_grad``) the gradients of the reduced loss.

    See ``transducer_forward`` for shapes; ``reduction`` as in ``rnnt_loss``.
    """
    v.check_choice("reduction", reduction, v.REDUCTIONS)
    losses, ctx = transducer_forward(
        enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation=activation,
        blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
        max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise,
        need_grad=compute_grad, allow_tf32=allow_tf32, backend=backend)
    loss = _reduce(losses, reduction)
    if not compute_grad:
        return TransducerOutput(loss, None)
    up = _upstream(ctx.backend.xp, losses.shape[0], reduction, losses.dtype)
    return TransducerOutput(loss, transducer_backward(ctx, up))
