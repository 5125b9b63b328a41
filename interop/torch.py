"""PyTorch adapter: ``rnnt_loss`` (torchaudio drop-in), the fused ``transducer_loss``, modules.

Both losses are ``torch.library`` custom ops (``cutrans::*``, see ``_torch_ops``) with
autograd formulas and fake implementations: they work eagerly, under
``torch.compile(fullgraph=True)``, in ``DistributedDataParallel``, and with repeated
``backward(retain_graph=True)`` (gradients are scaled out of place). The fused loss with
``reduction="mean"``/``"sum"`` reduces inside the op and computes every gradient in its
forward, one pass over the batch (the seed paper's schedule); its backward only scales
them by the upstream scalar. ``reduction="none"`` keeps two passes (a per-sample upstream
gradient). ``allow_tf32`` of the fused op follows ``torch.backends.cuda.matmul.allow_tf32``
for float32 CUDA tensors.
CPU tensors run the NumPy backend, CUDA tensors the CuPy kernels on torch's current
stream -- zero-copy through DLPack either way.

Example::

    import torch
    from cutrans.interop.torch import TransducerLoss

    loss_fn = TransducerLoss(torch.nn.Linear(320, 1024))  # joint dim 320, vocab 1024
    loss = loss_fn(enc, pred, targets, enc_lengths, target_lengths)  # enc (B,T,320) ...
    loss.backward()  # grads for enc, pred and loss_fn.output_layer.{weight,bias}
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from cutrans import _validate as v
from cutrans._topology import check_variant_args, encode_variant
from cutrans.api import DEFAULT_WORKSPACE_BYTES

from . import _torch_ops as _ops

__all__ = ["rnnt_loss", "RNNTLoss", "transducer_loss", "TransducerLoss"]



def _check_tensor(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def _check_reduction(reduction):
    v.check_choice("reduction", reduction, v.REDUCTIONS)


def _need_grad(*xs) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def rnnt_loss(logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor,
              blank: int = -1, clamp: float = -1, reduction: str = "mean",
              fused_log_softmax: bool = True, *, fastemit_lambda: float = 0.0,
              variant: str = "rnnt", delay_penalty: float = 0.0, durations=None,
              big_blank_durations=None, sigma: float = 0.0, omega: float = 0.0) -> Tensor:
    """RNN-T loss, a drop-in for ``torchaudio.functional.rnnt_loss``, and its variants.

    Args:
        logits: ``(B, T, U+1, V)`` joint outputs, float32/float64/float16/bfloat16, any
            strides, CPU or CUDA.
        targets: ``(B, U)`` int32 (int64 accepted) labels, padded.
        logit_lengths: ``(B,)`` frames ``T_b`` in ``[1, T]``; target_lengths ``(B,)``
            labels ``U_b`` in ``[0, U]``; int32 (int64 accepted).
        blank: blank id; negative counts from the end (default -1: ``V - 1``).
        clamp: clip dLoss/dlogits to ``[-clamp, clamp]``; ``<= 0`` disables (default -1).
            (torchaudio documents this; its kernels in fact clip only from below — the
            positive softmax terms pass unclipped — so results differ where a gradient
            entry exceeds ``clamp``.)
        reduction: ``"none"`` -> ``(B,)``; ``"mean"`` (over the batch) | ``"sum"`` -> scalar.
        fused_log_softmax: ``True``: ``logits`` are unnormalised, log_softmax is applied
            inside (``lp = logits - logsumexp``). ``False``: as torchaudio, ``logits`` are
            used *as* log-probabilities (no normalisation; call ``log_softmax`` yourself)
            and the gradient is w.r.t. those entries alone.
        fastemit_lambda: FastEmit regularisation (NeMo convention: the loss reported is
            ``(1 + lambda) * -log P``); not a torchaudio argument.
        variant: ``"rnnt"`` | ``"modified"`` | ``"multiblank"`` | ``"tdt"`` with their
            arguments ``delay_penalty``, ``big_blank_durations``, ``durations``, ``sigma``,
            ``omega`` (see ``cutrans.rnnt_loss``; TDT: the last ``len(durations)`` logits
            are the duration logits). Other variants than ``"rnnt"`` need
            ``fused_log_softmax=True``.
    Returns:
        The loss in ``logits``' dtype (as torchaudio), computed in float32 (float64 for
        float64 logits).

    ``loss_b = -log sum_{paths} prod lp`` over the ``T_b x (U_b+1)`` lattice:
    ``alpha(t,u) = logaddexp(alpha(t-1,u) + lp_blank(t-1,u), alpha(t,u-1) + lp_y(t,u-1))``,
    ``loss_b = -(alpha(T_b-1,U_b) + lp_blank(T_b-1,U_b))``.
    """
    for name, x in (("logits", logits), ("targets", targets), ("logit_lengths", logit_lengths),
                    ("target_lengths", target_lengths)):
        _check_tensor(name, x)
    _check_reduction(reduction)
    clamp = v.normalize_clamp(clamp)
    blank, lam = v.check_int("blank", blank), v.check_scalar("fastemit_lambda", fastemit_lambda)
    spec = encode_variant(variant, delay_penalty, durations, big_blank_durations, sigma, omega)
    need = _need_grad(logits)
    if fused_log_softmax:
        losses = _ops.rnnt_loss_fwd(logits, targets, logit_lengths, target_lengths, blank,
                                    clamp, lam, need, spec)[0]
    else:
        if spec != "rnnt":
            raise ValueError(f"fused_log_softmax: False supports the standard RNN-T only "
                             f"(variant='rnnt' without delay_penalty), got {spec!r}")
        losses = _logprob_losses(logits, targets, logit_lengths, target_lengths, blank, clamp,
                                 lam, need)
    return v.reduce_losses(losses.to(logits.dtype), reduction)


def _logprob_losses(logits, targets, logit_lengths, target_lengths, blank, clamp, lam, need):
    """fused_log_softmax=False: gather lp_blank / lp_y in torch, recursion in the core."""
    v.logits_shapes(logits, targets, logit_lengths, target_lengths)  # named errors first
    B, T, U1, V = logits.shape
    targets, target_lengths = targets.to(logits.device), target_lengths.to(logits.device)
    cdt = _ops.compute_dtype(logits.dtype)
    b = blank % V if -V <= blank < V else 0  # out-of-range blank: the op raises
    u = torch.arange(U1, device=logits.device)
    emits = u[None, :] < target_lengths.to(logits.device)[:, None]  # (B, U+1)
    lab = torch.cat([targets, targets.new_zeros((targets.shape[0], 1))], dim=1)
    lab = torch.where(emits, lab.clamp(0, V - 1), b).long()  # bad labels: the op raises
    lp_emit = logits.gather(-1, lab[:, None, :, None].expand(B, T, U1, 1)).squeeze(-1)
    lp_emit = lp_emit.to(cdt).masked_fill(~emits[:, None, :], float("-inf"))
    lp_blank = logits[..., b].to(cdt)
    return _ops.rnnt_lattice(lp_blank, lp_emit, logits, targets, logit_lengths, target_lengths,
                             blank, clamp, lam, need)[0]


class RNNTLoss(nn.Module):
    """Module form of ``rnnt_loss`` (``torchaudio.transforms.RNNTLoss`` arguments, plus
    ``fastemit_lambda`` and ``**variant_args``: ``variant=`` and its arguments)."""

    def __init__(self, blank: int = -1, clamp: float = -1.0, reduction: str = "mean",
                 fused_log_softmax: bool = True, *, fastemit_lambda: float = 0.0,
                 **variant_args):
        super().__init__()
        _check_reduction(reduction)
        check_variant_args(**variant_args)  # now, not at the first call (what needs
        # the vocabulary is checked then)
        self.blank, self.clamp, self.reduction = blank, clamp, reduction
        self.fused_log_softmax, self.fastemit_lambda = fused_log_softmax, fastemit_lambda
        self.variant_args = variant_args

    def forward(self, logits, targets, logit_lengths, target_lengths):
        return rnnt_loss(logits, targets, logit_lengths, target_lengths, self.blank, self.clamp,
                         self.reduction, self.fused_log_softmax,
                         fastemit_lambda=self.fastemit_lambda, **self.variant_args)


def transducer_loss(enc: Tensor, pred: Tensor, weight: Tensor, bias: Tensor | None,
                    targets: Tensor, enc_lengths: Tensor, target_lengths: Tensor, *,
                    activation: str = "tanh", blank: int = 0, reduction: str = "mean",
                    clamp: float | None = None, fastemit_lambda: float = 0.0,
                    max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                    sample_wise: bool = False, checks: str = "host",
                    status: Tensor | None = None, variant: str = "rnnt",
                    delay_penalty: float = 0.0, durations=None, big_blank_durations=None,
                    sigma: float = 0.0, omega: float = 0.0) -> Tensor:
    """Fused joint network + output layer + transducer loss, differentiable in enc, pred,
    W, b (``variant`` and its arguments as in ``rnnt_loss``; TDT: the last
    ``len(durations)`` rows of ``weight``/``bias`` give the duration logits).

    ``z(b,t,u) = act(enc[b,t] + pred[b,u]) @ weight.T + bias``, ``lp = log_softmax(z)``,
    RNN-T loss over the lattice -- without building a ``(B, T, U+1, V)`` tensor (row
    chunks bounded by ``max_workspace_bytes``; ``sample_wise`` keeps each chunk in one
    utterance). ``"mean"``/``"sum"``: every gradient is computed in the forward, one pass
    (the backward scales them); ``"none"``: two passes (the backward recomputes).

    Args:
        enc: ``(B, T, H)``; pred: ``(B, U+1, H)``; weight ``(V, H)``; bias ``(V,)`` or
            None (zeros); one float dtype (float16/bfloat16/float32/float64), one device.
        targets: ``(B, U)`` int32/int64; enc_lengths ``(B,)`` in ``[1, T]``;
            target_lengths ``(B,)`` in ``[0, U]``.
        activation: ``"tanh"`` | ``"relu"`` | ``"identity"``; blank: id (negative from the end).
        clamp: clip dLoss/dz to ``[-clamp, clamp]`` (None or <= 0: off).
        checks: ``"host"`` (default): a bad input raises before the call returns (CUDA
            tensors: the lengths are read on the host first, the labels and NaN/inf
            checked on the device and their flags read once at the end: synchronisations).
            ``"device"``: no synchronisation -- pass the lengths as CPU tensors and an
            int32 ``status`` tensor of shape () on ``enc``'s device; labels and non-finite
            results are flagged into it (``cutrans.raise_for_status(status)`` reads it when
            you choose). Capturable in a CUDA graph (``torch.cuda.graph``) after a
            warm-up call outside the capture (its GEMMs then go to cuBLAS directly:
            ``cutrans.backends._cublas``; tested on an H100). Needs
            ``reduction`` "mean"/"sum" when gradients are needed.
    Returns:
        The reduced loss (``(B,)`` for ``"none"``) in the compute dtype: float32 for
        float16/bfloat16/float32 inputs, float64 for float64.
    """
    for name, x in (("enc", enc), ("pred", pred), ("weight", weight), ("targets", targets),
                    ("enc_lengths", enc_lengths), ("target_lengths", target_lengths)):
        _check_tensor(name, x)
    _check_reduction(reduction)
    if v.check_checks(checks, status) == "device":
        if status is None:
            raise TypeError("status: checks='device' needs an int32 status tensor of shape ()")
        _check_tensor("status", status)
        if status.dtype != torch.int32 or status.shape != ():
            raise TypeError(f"status: expected an int32 tensor of shape (), got "
                            f"{status.dtype} {tuple(status.shape)}")
    if bias is None:
        bias = weight.new_zeros(weight.shape[:1])
    _check_tensor("bias", bias)
    v.check_choice("activation", activation, v.ACTIVATION_NAMES)
    tf32 = bool(enc.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    word = enc.new_zeros((), dtype=torch.int32) if status is None else status
    spec = encode_variant(variant, delay_penalty, durations, big_blank_durations, sigma, omega)
    args = (enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation,
            v.check_int("blank", blank), v.normalize_clamp(clamp),
            v.check_scalar("fastemit_lambda", fastemit_lambda),
            v.check_workspace(max_workspace_bytes), v.check_bool("sample_wise", sample_wise),
            tf32, checks, word)
    need = _need_grad(enc, pred, weight, bias)
    if reduction != "none" and need:
        needs = [x.requires_grad for x in (enc, pred, weight, bias)]
        out = _ops.transducer_reduced(*args, reduction, spec, needs)
        loss, new_status = out[0], out[-1]
    else:
        if need and checks == "device":
            raise ValueError("checks: 'device' needs reduction 'mean' or 'sum' when "
                             "gradients are needed (reduction 'none' reads the lengths "
                             "back in its backward)")
        losses, _, new_status = _ops.transducer_fwd(*args, need, spec)
        loss = v.reduce_losses(losses, reduction)
    if status is not None:
        status.copy_(new_status)  # the caller's word, updated in stream order
    return loss


class TransducerLoss(nn.Module):
    """Fused joint + output layer + RNN-T loss owning (or sharing) an ``nn.Linear``.

    ``TransducerLoss(nn.Linear(H, V))`` or ``TransducerLoss(in_features=H, vocab_size=V)``;
    ``forward(enc (B,T,H), pred (B,U+1,H), targets, enc_lengths, target_lengths)``.
    The layer's weight and bias receive gradients; use ``output_layer`` at inference
    (``output_layer(act(enc[:, :, None] + pred[:, None]))``).
    ``checks="device"`` (see ``transducer_loss``): the module owns an int32 ``status``
    buffer on ``enc``'s device that every call ORs its flags into; read it with
    ``cutrans.raise_for_status(module.status)`` and reset it with ``module.status.zero_()``.
    ``**variant_args``: ``variant=`` and its arguments (see ``rnnt_loss``); for TDT
    ``vocab_size`` counts the token and the duration outputs.
    """

    def __init__(self, output_layer: nn.Linear | None = None, *, in_features: int | None = None,
                 vocab_size: int | None = None, activation: str = "tanh", blank: int = 0,
                 reduction: str = "mean", clamp: float | None = None,
                 fastemit_lambda: float = 0.0, max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 sample_wise: bool = False, checks: str = "host", device=None, dtype=None,
                 **variant_args):
        super().__init__()
        check_variant_args(**variant_args)  # now, not at the first call (what needs
        # the vocabulary is checked then)
        self.variant_args = variant_args
        if output_layer is None:
            if in_features is None or vocab_size is None:
                raise ValueError("output_layer: expected an nn.Linear, or in_features and "
                                 "vocab_size to create one")
            output_layer = nn.Linear(in_features, vocab_size, device=device, dtype=dtype)
        if not isinstance(output_layer, nn.Linear):
            raise TypeError(f"output_layer: expected an nn.Linear, got "
                            f"{type(output_layer).__name__}")
        _check_reduction(reduction)
        self.output_layer = output_layer
        self.activation, self.blank, self.reduction = activation, blank, reduction
        self.clamp, self.fastemit_lambda = clamp, fastemit_lambda
        self.max_workspace_bytes, self.sample_wise = max_workspace_bytes, sample_wise
        self.checks = v.check_checks(checks, None)
        self.register_buffer("status", torch.zeros((), dtype=torch.int32, device=device),
                             persistent=False)

    def forward(self, enc, pred, targets, enc_lengths, target_lengths):
        """Mixed precision (e.g. under ``torch.autocast``): the output layer and ``pred``
        are cast to ``enc``'s dtype; the parameters' gradients come back in their dtype."""
        lin = self.output_layer
        weight, bias = lin.weight, lin.bias
        if weight.dtype != enc.dtype:
            weight = weight.to(enc.dtype)
            bias = None if bias is None else bias.to(enc.dtype)
        pred = pred.to(enc.dtype)
        status = None
        if self.checks == "device":
            if self.status.device != enc.device:
                self.status = self.status.to(enc.device)
            status = self.status
        return transducer_loss(enc, pred, weight, bias, targets, enc_lengths,
                               target_lengths, activation=self.activation, blank=self.blank,
                               reduction=self.reduction, clamp=self.clamp,
                               fastemit_lambda=self.fastemit_lambda,
                               max_workspace_bytes=self.max_workspace_bytes,
                               sample_wise=self.sample_wise, checks=self.checks,
                               status=status, **self.variant_args)
