"""JAX adapter: ``rnnt_loss`` and the fused ``transducer_loss`` with ``jax.custom_vjp``.

Works eagerly and under ``jit``, ``grad``, ``value_and_grad`` and ``vmap`` (the callback
runs once per mapped element: ``vmap_method="sequential"``). Integer arguments are not
differentiable (their cotangents are zero).

Routes into the framework-free core:

* CPU: ``jax.pure_callback`` -> NumPy backend (arrays arrive as NumPy arrays).
* GPU: ``jax.experimental.buffer_callback`` -> CuPy backend on the device buffers
  (zero-copy) and XLA's stream. Set ``cutrans.interop.jax.ROUTE = "buffer"`` to use that
  route on the CPU too (NumPy views of the buffers); ``None`` picks by
  ``jax.default_backend()``.

The forward returns per-sample losses plus the gradient coefficients (padded
``(B, T, U+1)``, compute dtype) as residuals; the backward recomputes from the inputs.

Errors: arguments are validated at trace time (types, ndim, shapes, dtypes) and, when the
integer arguments are concrete (eager calls), their values too -- raising ``TypeError`` /
``ValueError`` naming the argument. Under ``jit`` the values are checked inside the
callback; the error then reaches the caller as a ``jax.errors.JaxRuntimeError`` whose
message contains the same text (e.g. ``"ValueError: target_lengths: expected ..."``), as
do the errors only the computation finds, eagerly too (NaN/inf inputs, no alignment).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cutrans import _validate as _v
from cutrans._fused import check_least_workspace
from cutrans._topology import decode_variant, encode_variant
from cutrans.api import (DEFAULT_WORKSPACE_BYTES, common_scalars, reduced_grad_factors,
                         variant_args)

from . import _core

__all__ = ["rnnt_loss", "transducer_loss", "ROUTE"]

ROUTE: str | None = None  # None (by platform) | "pure" | "buffer"


# ------------------------------------------------------------------ callbacks
def _route() -> str:
    if ROUTE is not None:
        return ROUTE
    return "pure" if jax.default_backend() == "cpu" else "buffer"


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def _call(fn, out_types, *args):
    """Run ``fn(*numpy_or_cupy_arrays) -> tuple of arrays`` inside the traced program."""
    if _route() == "pure":
        def host(*a):
            res = fn(*(np.asarray(x) for x in a))
            return tuple(np.asarray(r, dtype=t.dtype) for r, t in zip(res, out_types))
        return jax.pure_callback(host, tuple(out_types), *args, vmap_method="sequential")
    from jax.experimental.buffer_callback import buffer_callback
    return buffer_callback(functools.partial(_buffer_cb, fn), tuple(out_types),
                           vmap_method="sequential")(*args)


class _StreamHandle:
    """XLA's stream pointer as a ``__cuda_stream__`` object (CUDA stream protocol)."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def _xla_stream(cupy, ptr: int, dev_id: int):
    if hasattr(cupy.cuda.Stream, "from_external"):  # CuPy >= 14 (ExternalStream deprecated)
        return cupy.cuda.Stream.from_external(_StreamHandle(ptr))
    return cupy.cuda.ExternalStream(ptr, dev_id)


def _buffer_cb(fn, ctx, outs, *bufs):
    """buffer_callback body: device buffers -> CuPy on XLA's stream (NumPy on the CPU)."""
    dev_type, dev_id = bufs[0].__dlpack_device__()
    if dev_type != 1:  # DLPack device type 1 = kDLCPU
        import cupy
        # the buffers' device, and XLA's stream on it (not CuPy's current device)
        with cupy.cuda.Device(dev_id), _xla_stream(cupy, int(ctx.stream), dev_id):
            res = fn(*(cupy.from_dlpack(b) for b in bufs))
            for o, r in zip(outs, res):
                dst = cupy.from_dlpack(o)
                dst[...] = r.astype(dst.dtype, copy=False)
        return
    # CPU: __array__ views (np.from_dlpack rejects bfloat16 DLTensors; __array__ does not)
    res = fn(*(np.asarray(b) for b in bufs))
    for o, r in zip(outs, res):
        dst = np.asarray(o)
        dst[...] = np.asarray(r).astype(dst.dtype, copy=False)


def _cdt(dtype):
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


# ------------------------------------------------------------------ validation
def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _scalars(t_name, t_len, u_len, targets, T, n_logits, blank, clamp, fastemit_lambda,
             variant_kw):
    """Checked (blank id, clamp, fastemit_lambda, variant string, coefficient columns).
    Eager calls also check lengths and labels now, with the core's messages (under jit the
    callback checks them)."""
    spec = encode_variant(**variant_kw)
    topo, clamp, lam = common_scalars(n_logits, blank, clamp, fastemit_lambda,
                                      decode_variant(spec))
    if _is_concrete(targets, t_len, u_len):
        _v.check_values(t_name, np.asarray(t_len), np.asarray(u_len), np.asarray(targets), T,
                        topo, n_logits)
    return topo.blanks[0], clamp, lam, spec, topo.width + (2 if topo.omega else 0)


# ------------------------------------------------------------------ logits op
class _LogitsParams(NamedTuple):
    blank: int
    clamp: float
    fastemit_lambda: float
    variant: str
    width: int  # columns of the saved coefficients

    def kw(self):
        return dict(blank=self.blank, clamp=self.clamp, fastemit_lambda=self.fastemit_lambda,
                    variant=self.variant)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _rnnt(logits, targets, t_len, u_len, p: _LogitsParams):
    B = logits.shape[0]

    def fwd(x, y, tl, ul):
        return _core.logits_forward(x, y, tl, ul, **p.kw(), need_grad=False)[:1]
    return _call(fwd, [_sds((B,), _cdt(logits.dtype))], logits, targets, t_len, u_len)[0]


def _rnnt_fwd(logits, targets, t_len, u_len, p):
    B, T, U1, _ = logits.shape
    cdt = _cdt(logits.dtype)

    def fwd(x, y, tl, ul):
        return _core.logits_forward(x, y, tl, ul, **p.kw(), need_grad=True)
    losses, coefs = _call(fwd, [_sds((B,), cdt), _sds((B, T, U1, p.width), cdt)], logits,
                          targets, t_len, u_len)
    return losses, (logits, targets, t_len, u_len, coefs)


def _rnnt_bwd(p, res, g):
    logits = res[0]

    def bwd(gl, *r):
        return (_core.logits_backward(gl, *r, **p.kw()),)
    (grad,) = _call(bwd, [_sds(logits.shape, logits.dtype)], g, *res)
    return grad, None, None, None


_rnnt.defvjp(_rnnt_fwd, _rnnt_bwd)


def rnnt_loss(logits, targets, logit_lengths, target_lengths, *, blank: int = 0,
              reduction: str = "mean", clamp: float | None = None,
              fastemit_lambda: float = 0.0, variant: str = "rnnt", delay_penalty: float = 0.0,
              durations=None, big_blank_durations=None, sigma: float = 0.0,
              omega: float = 0.0):
    """Transducer loss on logits ``(B, T, U+1, V)`` (log_softmax fused), differentiable in
    logits; ``variant`` and its arguments as in ``cutrans.rnnt_loss``.

    Args:
        logits: float16/bfloat16/float32/float64 ``(B, T, U+1, V)``.
        targets: ``(B, U)`` int32/int64; logit_lengths ``(B,)`` in ``[1, T]``;
            target_lengths ``(B,)`` in ``[0, U]``.
        blank: blank id (negative counts from the end); clamp: clip dLoss/dlogits to
            ``[-clamp, clamp]`` (None or <= 0: off); fastemit_lambda: NeMo convention.
        reduction: ``"none"`` -> ``(B,)`` | ``"mean"`` (over the batch) | ``"sum"``.
    Returns:
        The loss in the compute dtype (float32; float64 for float64 logits).
    """
    _v.check_choice("reduction", reduction, _v.REDUCTIONS)
    V = _v.logits_shapes(logits, targets, logit_lengths, target_lengths)
    p = _LogitsParams(*_scalars("logit_lengths", logit_lengths, target_lengths, targets,
                                logits.shape[1], V, blank, clamp, fastemit_lambda,
                                variant_args(variant, delay_penalty, durations,
                                             big_blank_durations, sigma, omega)))
    return _v.reduce_losses(_rnnt(logits, targets, logit_lengths, target_lengths, p), reduction)


# ------------------------------------------------------------------ fused op
class _FusedParams(NamedTuple):
    activation: str
    blank: int
    clamp: float
    fastemit_lambda: float
    variant: str
    width: int  # columns of the saved coefficients
    max_workspace_bytes: int
    sample_wise: bool

    def kw(self):
        kw = self._asdict()
        del kw["width"]
        return kw


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _fused(enc, pred, weight, bias, targets, t_len, u_len, p: _FusedParams):
    def fwd(*a):
        return _core.fused_forward(*a, **p.kw(), need_grad=False)[:1]
    return _call(fwd, [_sds(enc.shape[:1], _cdt(enc.dtype))], enc, pred, weight, bias,
                 targets, t_len, u_len)[0]


def _fused_fwd(enc, pred, weight, bias, targets, t_len, u_len, p):
    B, T, _ = enc.shape
    U1 = pred.shape[1]
    cdt = _cdt(enc.dtype)

    def fwd(*a):
        return _core.fused_forward(*a, **p.kw(), need_grad=True)
    args = (enc, pred, weight, bias, targets, t_len, u_len)
    losses, coefs = _call(fwd, [_sds((B,), cdt), _sds((B, T, U1, p.width), cdt)], *args)
    return losses, (*args, coefs)


def _fused_bwd(p, res, g):
    def bwd(gl, *r):
        return _core.fused_backward(gl, *r, **p.kw())
    grads = _call(bwd, [_sds(x.shape, x.dtype) for x in res[:4]], g, *res)
    return (*grads, None, None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _fused_reduced(enc, pred, weight, bias, targets, t_len, u_len, p: _FusedParams,
                   reduction: str):
    """The reduced loss; differentiated, it computes every gradient in one pass."""
    return _v.reduce_losses(_fused(enc, pred, weight, bias, targets, t_len, u_len, p),
                            reduction)


def _fused_reduced_fwd(enc, pred, weight, bias, targets, t_len, u_len, p, reduction):
    def fwd(*a):
        return _core.fused_reduced(*a, **p.kw(), reduction=reduction)
    ins = (enc, pred, weight, bias)
    loss, *grads = _call(fwd, [_sds((), _cdt(enc.dtype))] +
                         [_sds(x.shape, x.dtype) for x in ins], *ins, targets, t_len, u_len)
    return loss, tuple(grads)


def _fused_reduced_bwd(p, reduction, grads, g):
    # in the compute dtype, rounded once: a loss scale such as 2**16 does not fit float16;
    # with the factors the one-pass gradients still owe (api.reduced_grad_factors)
    owed = reduced_grad_factors(reduction, grads[0].dtype, grads[0].shape[0])
    return (*((x.astype(_cdt(x.dtype)) * (g.astype(_cdt(x.dtype)) * o)).astype(x.dtype)
              for x, o in zip(grads, owed)), None, None, None)


_fused_reduced.defvjp(_fused_reduced_fwd, _fused_reduced_bwd)


def transducer_loss(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *,
                    activation: str = "tanh", blank: int = 0, reduction: str = "mean",
                    clamp: float | None = None, fastemit_lambda: float = 0.0,
                    max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                    sample_wise: bool = False, variant: str = "rnnt",
                    delay_penalty: float = 0.0, durations=None, big_blank_durations=None,
                    sigma: float = 0.0, omega: float = 0.0):
    """Fused ``act(enc[b,t] + pred[b,u]) @ weight.T + bias`` -> log_softmax -> transducer
    loss (``variant`` and its arguments as in ``cutrans.rnnt_loss``).

    Never builds ``(B, T, U+1, V)``; differentiable in enc ``(B, T, H)``, pred
    ``(B, U+1, H)``, weight ``(V, H)`` and bias ``(V,)`` (one float dtype). Other
    arguments as ``rnnt_loss``; ``activation``: ``"tanh"`` | ``"relu"`` | ``"identity"``.
    ``"mean"``/``"sum"``: differentiation computes every gradient in one pass with the
    loss (the backward scales them); ``"none"``: two passes.
    Returns the loss in the compute dtype (float32; float64 for float64 inputs).
    """
    _v.check_choice("reduction", reduction, _v.REDUCTIONS)
    V = _v.fused_shapes(enc, pred, weight, bias, targets, enc_lengths, target_lengths)
    _v.check_choice("activation", activation, _v.ACTIVATION_NAMES)
    scalars = _scalars("enc_lengths", enc_lengths, target_lengths, targets, enc.shape[1], V,
                       blank, clamp, fastemit_lambda,
                       variant_args(variant, delay_penalty, durations, big_blank_durations,
                                    sigma, omega))
    p = _FusedParams(activation, *scalars, _v.check_workspace(max_workspace_bytes),
                     _v.check_bool("sample_wise", sample_wise))
    check_least_workspace(p.max_workspace_bytes, enc, pred, weight)  # now, not when it runs
    args = (enc, pred, weight, bias, targets, enc_lengths, target_lengths, p)
    if reduction == "none":
        return _fused(*args)
    return _fused_reduced(*args, reduction)
