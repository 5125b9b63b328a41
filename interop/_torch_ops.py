"""``torch.library`` custom ops (namespace ``cutrans::``) behind ``cutrans.interop.torch``.

Op pairs (custom ops return tensors only, so the forward returns the losses plus the
gradient coefficients, padded ``(B, T, U+1, coef_width)``; the backward op recomputes from
the inputs and those coefficients). The transducer variant and its arguments travel as one
string argument ``variant`` (``cutrans._topology.encode_variant``):

* ``cutrans::rnnt_loss_fwd`` / ``cutrans::rnnt_loss_bwd``      -- logits op
* ``cutrans::transducer_fwd`` / ``cutrans::transducer_bwd``    -- fused op, two passes
  (reduction "none": the backward gets a per-sample upstream gradient)
* ``cutrans::transducer_reduced``                             -- fused op, one pass
  (reduction "mean"/"sum": the forward returns the reduced loss and the gradients; the
  backward scales them by the upstream scalar, out of place)
* ``cutrans::rnnt_lattice``                                    -- recursion on log-probs
  (``fused_log_softmax=False``; its backward is plain torch arithmetic)

Each has a fake (meta) implementation and, for the forwards, an autograd formula, so
``torch.compile(fullgraph=True)`` traces through them. Tensors are exchanged with the
core zero-copy through DLPack (CPU: NumPy; CUDA: CuPy on torch's current stream, with
CuPy allocations served by torch's caching allocator). bfloat16 goes through NumPy as
an int16 view reinterpreted as ``ml_dtypes.bfloat16`` (zero-copy); without ml_dtypes it
is converted to float32 on the CPU (a copy) and the gradients cast back.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import Tensor

from cutrans.api import SCALE_PIECE, reduced_grad_factors

from . import _core

try:
    from ml_dtypes import bfloat16 as _NP_BF16
except ImportError:  # pragma: no cover - ml_dtypes ships with JAX; optional here
    _NP_BF16 = None

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------ DLPack bridge
def core_dtype(t: Tensor) -> torch.dtype:
    """The dtype of ``to_xp(t)``: ``t``'s, but float32 for a bfloat16 CPU tensor without
    ml_dtypes (converted)."""
    if t.dtype == torch.bfloat16 and _NP_BF16 is None and not t.is_cuda:
        return torch.float32
    return t.dtype


def to_xp(t: Tensor):
    """A NumPy (CPU) or CuPy (CUDA) view of ``t`` (no copy, except bf16 w/o ml_dtypes)."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.is_cuda:
        import cupy
        if t.dtype == torch.bfloat16:
            return cupy.from_dlpack(t.view(torch.int16)).view(_NP_BF16 or np.int16)
        return cupy.from_dlpack(t)
    if core_dtype(t) != t.dtype:  # bfloat16 without ml_dtypes: a float32 copy
        return np.from_dlpack(t.float())
    if t.dtype == torch.bfloat16:
        return np.from_dlpack(t.view(torch.int16)).view(_NP_BF16)
    return np.from_dlpack(t)


def from_xp(a, dtype: torch.dtype | None = None) -> Tensor:
    """A tensor sharing ``a``'s memory; cast to ``dtype`` if given and different."""
    bf16 = _NP_BF16 is not None and a.dtype == np.dtype(_NP_BF16)
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(a.view(np.int16) if bf16 else a)
    else:
        t = torch.from_dlpack(a.view(np.int16) if bf16 else a)
    if bf16:
        t = t.view(torch.bfloat16)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _stream_of(cupy, dev: int):
    ts = torch.cuda.current_stream(dev)
    if hasattr(ts, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(ts)
    return cupy.cuda.ExternalStream(ts.cuda_stream, dev)


_TORCH_ALLOCATOR = None


def _torch_allocator(cupy):
    """CuPy allocations served by torch's caching allocator (on torch's current stream)."""
    global _TORCH_ALLOCATOR
    if _TORCH_ALLOCATOR is None:
        def malloc(size, device):
            return torch.cuda.caching_allocator_alloc(
                size, device, torch.cuda.current_stream(device))

        def free(ptr, device):
            torch.cuda.caching_allocator_delete(ptr)

        _TORCH_ALLOCATOR = cupy.cuda.memory.PythonFunctionAllocator(malloc, free).malloc
    return _TORCH_ALLOCATOR


@contextlib.contextmanager
def device_scope(t: Tensor):
    """On CUDA: CuPy on ``t``'s device, torch's current stream and allocator."""
    if not t.is_cuda:
        yield
        return
    import cupy
    dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(dev), _stream_of(cupy, dev), \
            cupy.cuda.using_allocator(_torch_allocator(cupy)):
        yield


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _coef_like(x: Tensor, B: int, T: int, U1: int, need: bool, width: int | None = None
               ) -> Tensor:
    """Saved coefficients: (B, T, U+1) (lattice op), (B, T, U+1, width) (loss ops), or an
    empty tensor without ``need``."""
    shape = ((B, T, U1) if width is None else (B, T, U1, width)) if need else (0,)
    return x.new_empty(shape, dtype=compute_dtype(x.dtype))


def _empty_coefs(x: Tensor):
    e = x.new_empty((0,), dtype=compute_dtype(x.dtype))
    return e, e.clone()


def _coefs_out(x: Tensor, coefs) -> Tensor:
    return x.new_empty((0,), dtype=compute_dtype(x.dtype)) if coefs is None else from_xp(coefs)


# ------------------------------------------------------------------ logits op
@torch.library.custom_op("cutrans::rnnt_loss_fwd", mutates_args=())
def rnnt_loss_fwd(logits: Tensor, targets: Tensor, logit_lengths: Tensor,
                  target_lengths: Tensor, blank: int, clamp: float, fastemit_lambda: float,
                  need_grad: bool, variant: str) -> tuple[Tensor, Tensor]:
    """(losses, coefficients (B, T, U+1, coef_width) or empty)."""
    with device_scope(logits):
        losses, coefs = _core.logits_forward(
            to_xp(logits), to_xp(targets), to_xp(logit_lengths), to_xp(target_lengths),
            blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda, need_grad=need_grad,
            variant=variant)
        return from_xp(losses), _coefs_out(logits, coefs)


@rnnt_loss_fwd.register_fake
def _(logits, targets, logit_lengths, target_lengths, blank, clamp, fastemit_lambda, need_grad,
      variant):
    B, T, U1, V = logits.shape
    return (logits.new_empty((B,), dtype=compute_dtype(logits.dtype)),
            _coef_like(logits, B, T, U1, need_grad, _core.coef_width(V, blank, variant)))


@torch.library.custom_op("cutrans::rnnt_loss_bwd", mutates_args=())
def rnnt_loss_bwd(grad_losses: Tensor, logits: Tensor, targets: Tensor, logit_lengths: Tensor,
                  target_lengths: Tensor, coefs: Tensor, blank: int, clamp: float,
                  fastemit_lambda: float, variant: str) -> Tensor:
    with device_scope(logits):
        g = _core.logits_backward(
            to_xp(grad_losses.contiguous()), to_xp(logits), to_xp(targets),
            to_xp(logit_lengths), to_xp(target_lengths), to_xp(coefs), blank=blank,
            clamp=clamp, fastemit_lambda=fastemit_lambda, variant=variant)
        return from_xp(g, logits.dtype)


@rnnt_loss_bwd.register_fake
def _(grad_losses, logits, *args):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _rnnt_setup(ctx, inputs, output):
    logits, targets, logit_lengths, target_lengths, blank, clamp, lam, _, variant = inputs
    ctx.save_for_backward(logits, targets, logit_lengths, target_lengths, output[1])
    ctx.scalars = (blank, clamp, lam, variant)


def _rnnt_backward(ctx, grad_losses, _gcoefs):
    if not ctx.needs_input_grad[0]:
        return (None,) * 9
    logits, targets, tl, ul, coefs = ctx.saved_tensors
    g = torch.ops.cutrans.rnnt_loss_bwd(grad_losses, logits, targets, tl, ul, coefs,
                                        *ctx.scalars)
    return (g,) + (None,) * 8


rnnt_loss_fwd.register_autograd(_rnnt_backward, setup_context=_rnnt_setup)


# ------------------------------------------------------------------ fused op
def _status_kw(checks: str, status_out: Tensor) -> dict:
    """The core's checks arguments: in device mode the core ORs its flags into
    ``status_out`` (a copy of the caller's word: ops with autograd cannot mutate inputs)."""
    return dict(checks=checks, status=to_xp(status_out) if checks == "device" else None)


@torch.library.custom_op("cutrans::transducer_fwd", mutates_args=())
def transducer_fwd(enc: Tensor, pred: Tensor, weight: Tensor, bias: Tensor, targets: Tensor,
                   enc_lengths: Tensor, target_lengths: Tensor, activation: str, blank: int,
                   clamp: float, fastemit_lambda: float, max_workspace_bytes: int,
                   sample_wise: bool, allow_tf32: bool, checks: str, status: Tensor,
                   need_grad: bool, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """(losses, coefficients (B, T, U+1, coef_width) or empty, status | this call's flags)."""
    status = status.clone()
    with device_scope(enc):
        losses, coefs = _core.fused_forward(
            *(to_xp(x) for x in (enc, pred, weight, bias, targets, enc_lengths,
                                 target_lengths)),
            activation=activation, blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
            max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise,
            need_grad=need_grad, allow_tf32=allow_tf32, variant=variant,
            **_status_kw(checks, status))
        return from_xp(losses), _coefs_out(enc, coefs), status


@transducer_fwd.register_fake
def _(enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation, blank, clamp,
      fastemit_lambda, max_workspace_bytes, sample_wise, allow_tf32, checks, status,
      need_grad, variant):
    B, T, _ = enc.shape
    U1 = pred.shape[1]
    width = _core.coef_width(weight.shape[0], blank, variant)
    return (enc.new_empty((B,), dtype=compute_dtype(enc.dtype)),
            _coef_like(enc, B, T, U1, need_grad, width), torch.empty_like(status))


@torch.library.custom_op("cutrans::transducer_bwd", mutates_args=())
def transducer_bwd(grad_losses: Tensor, enc: Tensor, pred: Tensor, weight: Tensor,
                   bias: Tensor, targets: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
                   coefs: Tensor, activation: str, blank: int, clamp: float,
                   fastemit_lambda: float, max_workspace_bytes: int, sample_wise: bool,
                   allow_tf32: bool, variant: str, needs: list[bool]
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ins = (enc, pred, weight, bias)
    with device_scope(enc):
        grads = _core.fused_backward(
            to_xp(grad_losses.contiguous()),
            *(to_xp(x) for x in (*ins, targets, enc_lengths, target_lengths, coefs)),
            activation=activation, blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
            max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise, needs=needs,
            allow_tf32=allow_tf32, variant=variant)
        return tuple(from_xp(g, x.dtype) if need else x.new_empty((0,))
                     for g, x, need in zip(grads, ins, needs))


@transducer_bwd.register_fake
def _(grad_losses, enc, pred, weight, bias, *args):
    needs = args[-1]
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) if need
                 else x.new_empty((0,)) for x, need in zip((enc, pred, weight, bias), needs))


def _fused_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], output[1])
    ctx.scalars = (*inputs[7:14], inputs[17])  # activation ... allow_tf32, variant


def _fused_backward(ctx, grad_losses, _gcoefs, _gstatus):
    needs = list(ctx.needs_input_grad[:4])
    if not any(needs):
        return (None,) * 18
    saved = ctx.saved_tensors
    grads = torch.ops.cutrans.transducer_bwd(grad_losses, *saved, *ctx.scalars, needs)
    return tuple(g if n else None for g, n in zip(grads, needs)) + (None,) * 14


transducer_fwd.register_autograd(_fused_backward, setup_context=_fused_setup)


@torch.library.custom_op("cutrans::transducer_reduced", mutates_args=())
def transducer_reduced(enc: Tensor, pred: Tensor, weight: Tensor, bias: Tensor,
                       targets: Tensor, enc_lengths: Tensor, target_lengths: Tensor,
                       activation: str, blank: int, clamp: float, fastemit_lambda: float,
                       max_workspace_bytes: int, sample_wise: bool, allow_tf32: bool,
                       checks: str, status: Tensor, reduction: str, variant: str,
                       needs: list[bool]
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One pass: the reduced loss (0-d, compute dtype), the gradients of the reduced loss
    w.r.t. (enc, pred, weight, bias) (empty where not in ``needs``), and
    ``status | this call's flags``."""
    ins = (enc, pred, weight, bias)
    status = status.clone()
    with device_scope(enc):
        loss, *grads = _core.fused_reduced(
            *(to_xp(x) for x in (*ins, targets, enc_lengths, target_lengths)),
            activation=activation, blank=blank, clamp=clamp, fastemit_lambda=fastemit_lambda,
            max_workspace_bytes=max_workspace_bytes, sample_wise=sample_wise,
            reduction=reduction, needs=needs, allow_tf32=allow_tf32, variant=variant,
            **_status_kw(checks, status))
        return (from_xp(loss), *(from_xp(g, x.dtype) if need else x.new_empty((0,))
                                 for g, x, need in zip(grads, ins, needs)), status)


@transducer_reduced.register_fake
def _(enc, pred, weight, bias, *args):
    needs, status = args[-1], args[-4]
    return (enc.new_empty((), dtype=compute_dtype(enc.dtype)),
            *(torch.empty_like(x, memory_format=torch.contiguous_format) if need
              else x.new_empty((0,)) for x, need in zip((enc, pred, weight, bias), needs)),
            torch.empty_like(status))


def _reduced_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:5])
    ctx.needs = inputs[-1]
    ctx.owed = reduced_grad_factors(inputs[-3], core_dtype(inputs[0]), inputs[0].shape[0])


def _scaled(g: Tensor, s: Tensor, owed: float) -> Tensor:
    """``g * s * owed`` computed in the compute dtype and rounded once into g's dtype (as the
    core's ``api._scale``; ``owed``: ``api.reduced_grad_factors``): a loss scale such as
    ``torch.amp.GradScaler``'s 2**16 does not fit float16. Out of place, so that a repeated
    backward (retain_graph) scales the same gradients; 16-bit gradients ``SCALE_PIECE``
    elements at a time (a bounded temporary)."""
    s = s.to(compute_dtype(g.dtype)) * owed
    if g.dtype == s.dtype:
        return g * s
    out = torch.empty_like(g, memory_format=torch.contiguous_format)
    for src, dst in zip(g.reshape(-1).split(SCALE_PIECE), out.view(-1).split(SCALE_PIECE)):
        dst.copy_(src.to(s.dtype).mul_(s))
    return out


_SECOND_ORDER = ("cutrans: second-order gradients are not supported: this backward ran with "
                 "create_graph=True, and its gradients come from cutrans' saved results, "
                 "which autograd would treat as constants (a wrong second derivative)")


def _first_order_only(backward):
    """A backward that raises under ``create_graph=True`` (grad mode on in the backward)
    instead of returning gradients that autograd would differentiate as constants -- a
    silently wrong second derivative (e.g. a gradient penalty). Raising at once keeps
    nothing alive for the check (the one-pass op saves its gradients, not its inputs). The
    ops without a formula for their backward op (``rnnt_loss_bwd``, ``transducer_bwd``)
    raise at the second derivative by themselves; ``torch.compile`` does not trace a double
    backward."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            raise RuntimeError(_SECOND_ORDER)
        return backward(ctx, *grads)
    return wrapper


@_first_order_only
def _reduced_backward(ctx, grad_loss, *_grad_grads):
    grads = tuple(_scaled(g, grad_loss, owed) if need and n else None
                  for g, need, n, owed in zip(ctx.saved_tensors, ctx.needs,
                                              ctx.needs_input_grad, ctx.owed))
    return grads + (None,) * 15


transducer_reduced.register_autograd(_reduced_backward, setup_context=_reduced_setup)


# ------------------------------------------------------------------ lattice op
@torch.library.custom_op("cutrans::rnnt_lattice", mutates_args=())
def rnnt_lattice(lp_blank: Tensor, lp_emit: Tensor, logits: Tensor, targets: Tensor,
                 logit_lengths: Tensor, target_lengths: Tensor, blank: int, clamp: float,
                 fastemit_lambda: float, need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Recursion on gathered log-probs; ``logits``/``targets`` are only validated here (also
    under ``torch.compile``: NaN/+inf at a lattice point, via the points' sums over the
    vocabulary, and samples without an alignment raise)."""
    with device_scope(lp_blank):
        _core.validate_logprob_args(to_xp(logits), to_xp(targets), to_xp(logit_lengths),
                                    to_xp(target_lengths), blank)
        row_sums = logits.detach().sum(-1, dtype=lp_blank.dtype)
        losses, cb, ce = _core.lattice_forward(
            to_xp(lp_blank.contiguous()), to_xp(lp_emit.contiguous()), to_xp(row_sums),
            to_xp(logit_lengths), to_xp(target_lengths), fastemit_lambda=fastemit_lambda,
            need_grad=need_grad)
        if cb is None:
            return (from_xp(losses), *_empty_coefs(lp_blank))
        return from_xp(losses), from_xp(cb), from_xp(ce)


@rnnt_lattice.register_fake
def _(lp_blank, lp_emit, logits, targets, logit_lengths, target_lengths, blank, clamp,
      fastemit_lambda, need_grad):
    B, T, U1 = lp_blank.shape
    return (lp_blank.new_empty((B,)), _coef_like(lp_blank, B, T, U1, need_grad),
            _coef_like(lp_blank, B, T, U1, need_grad))


def _lattice_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])
    ctx.clamp, ctx.lam = inputs[7], inputs[8]


@_first_order_only
def _lattice_backward(ctx, grad_losses, _gcb, _gce):
    # d loss / d lp = -coefficient (emission terms weighted 1 + lambda), clamped like
    # torchaudio's non-fused kernel, then scaled by the upstream gradient (out of place)
    cb, ce = ctx.saved_tensors
    gb, ge = -cb, -(1.0 + ctx.lam) * ce
    if ctx.clamp > 0:
        gb, ge = gb.clamp(min=-ctx.clamp), ge.clamp(min=-ctx.clamp)
    up = grad_losses[:, None, None].to(cb.dtype)
    gb, ge = gb * up, ge * up
    return (gb if ctx.needs_input_grad[0] else None, ge if ctx.needs_input_grad[1] else None,
            *(None,) * 8)


rnnt_lattice.register_autograd(_lattice_backward, setup_context=_lattice_setup)
