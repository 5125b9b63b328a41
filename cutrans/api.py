"""Public, framework-free API on NumPy (CPU) or CuPy (GPU) arrays.

Two operations, each as one call and as a forward/backward pair (for autograd adapters):

* ``rnnt_loss`` — the exact RNN-T loss on given logits, fused log-softmax.
* ``transducer_loss`` — the fused, sample-wise joint network + output layer + RNN-T loss
  of Braun et al. (2022): never builds a (B, T, U+1, V) or (B, T, U+1, H) tensor.

Math (0-based targets ``y``, ``lp = log_softmax(z)``)::

    alpha(0,0) = 0
    alpha(t,u) = logaddexp(alpha(t-1,u) + lp_blank(t-1,u), alpha(t,u-1) + lp_emit(t,u-1))
    loss_b     = -(1 + fastemit_lambda) * (alpha(T_b-1,U_b) + lp_blank(T_b-1,U_b))

Variants (``variant=``: ``"modified"``, ``"multiblank"``, ``"tdt"``, and ``delay_penalty``)
change the lattice's arcs and per-row values; see ``cutrans._topology``.

FastEmit follows NeMo/warprnnt-numba: the emission terms of the gradient get weight
``1 + lambda`` and the reported loss is ``(1 + lambda) * (-log P(y|x))``.
``clamp`` clips dLoss/dlogits to ``[-clamp, clamp]`` before the upstream scaling
(torchaudio's rule: ``None`` or ``clamp <= 0`` is off).

Precision: float16/bfloat16 inputs keep the joint activations and logits in their dtype
with float32 math and GEMM accumulation (what ``torch.autocast`` gives the batched
computation); float32 is exact float32 unless ``allow_tf32=True`` lets the GEMMs use TF32;
float64 is float64 throughout.

Host synchronisation (CuPy arrays): the forwards copy ``*_lengths`` to the host (the row
plan needs them). The other checks run on the device and their flags are read once, at
the end (``_run_checked``): the labels by a kernel, then ``rnnt_loss`` flags non-finite
rows (a blank log-probability) and log-likelihoods, the fused op (``checks="host"``)
non-finite log-likelihoods and the float inputs' NaN/inf (``isfinite(x.sum())``).
Nothing else synchronises: the kernels and the cuBLAS GEMMs are enqueued on the current
CuPy stream, backwards included.
"""
from __future__ import annotations

import numbers
import sys
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _arrays
from . import _fused
from . import _orchestrate as orch
from . import _status
from . import _validate as v
from ._dtypes import DTYPES, compute_dtype, dtype_name
from ._plan import make_plan
from ._topology import make_topology
from .backends import ACTIVATIONS, get_backend

DEFAULT_WORKSPACE_BYTES = 512 << 20  # 512 MiB of chunk workspace for the fused op
ALL_GRADS = (True, True, True, True)


def variant_args(variant="rnnt", delay_penalty=0.0, durations=None, big_blank_durations=None,
                 sigma=0.0, omega=0.0) -> dict:
    """The variant keywords of every loss function (see ``cutrans._topology``)."""
    return dict(variant=variant, delay_penalty=delay_penalty, durations=durations,
                big_blank_durations=big_blank_durations, sigma=sigma, omega=omega)


def common_scalars(n_logits: int, blank, clamp, fastemit_lambda, variants: dict):
    """(topology, clamp, fastemit_lambda), validated; ``variants``: ``variant_args``."""
    args = dict(variants)
    topo = make_topology(args.pop("variant"), n_logits, blank, **args)
    lam = v.check_scalar("fastemit_lambda", fastemit_lambda)
    if lam and topo.variant == "tdt":
        raise ValueError("fastemit_lambda: not defined for variant='tdt' (its emissions carry "
                         "durations); use 0")
    return topo, v.normalize_clamp(clamp), lam


def _upstream(xp, batch: int, reduction: str, dtype):
    """dReduced/dLoss_b: 1/B for mean, 1 otherwise (``none`` means d sum)."""
    return xp.full(batch, 1.0 / batch if reduction == "mean" else 1.0, dtype=dtype)


def _upstream_in(io, grad):
    """An upstream gradient from the caller (number -- NumPy scalars included -- or array of
    any kind) for the core."""
    if isinstance(grad, numbers.Real) or not hasattr(grad, "shape"):
        return grad
    return io.to_core(grad)


#: modules whose frames a warning skips to reach the caller's line
_LIBRARY_MODULES = ("cutrans", "torch", "jax", "jaxlib", "numpy", "cupy", "functools",
                    "contextlib")


def _caller_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the calling function) of the first
    frame outside cutrans and the array libraries: the user's line, through any entry point
    (core, adapters, custom ops, decorators)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and \
            frame.f_globals.get("__name__", "").split(".")[0] in _LIBRARY_MODULES:
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2  # no user frame (e.g. autograd's thread)


def _contiguous(xp, name: str, x):
    """``x`` C-contiguous; a non-contiguous input is copied, with a ``CopyWarning``."""
    if x.flags.c_contiguous:
        return x
    warnings.warn(f"{name}: not C-contiguous (strides {x.strides}): cutrans copies it "
                  f"({x.nbytes / 2**20:.1f} MiB); pass a contiguous array to avoid the copy",
                  CopyWarning, stacklevel=_caller_stacklevel())
    return xp.ascontiguousarray(x)


class CopyWarning(UserWarning):
    """An input was copied (it was not C-contiguous)."""


# ---------------------------------------------------------------------- logits
@_arrays.on_data_device
def rnnt_loss_forward(logits, targets, logit_lengths, target_lengths, *, blank: int = 0,
                      clamp: float | None = None, fastemit_lambda: float = 0.0,
                      layout: str = "padded", need_grad: bool = True, variant: str = "rnnt",
                      delay_penalty: float = 0.0, durations=None, big_blank_durations=None,
                      sigma: float = 0.0, omega: float = 0.0, backend=None):
    """Per-sample transducer losses on logits, and the context for ``rnnt_loss_backward``.

    Args:
        logits: ``(B, T, U+1, V)`` if ``layout="padded"``; ``(sum_b T_b (U_b+1), V)`` if
            ``layout="packed"`` (rows ordered by sample, then t, then u).
        targets: ``(B, U)`` int32/int64 labels, padded; only ``u < target_lengths[b]`` read.
        logit_lengths: ``(B,)`` frames ``T_b`` (1 <= T_b <= T).
        target_lengths: ``(B,)`` labels ``U_b`` (0 <= U_b <= U).
        variant: ``"rnnt"`` | ``"modified"`` | ``"multiblank"`` | ``"tdt"``, with
            ``delay_penalty`` (rnnt, modified), ``big_blank_durations`` and ``sigma``
            (multiblank), ``durations``, ``sigma`` and ``omega`` (tdt: the last
            ``len(durations)`` logits of a row are the duration logits); see the README
            and ``cutrans._topology``.
    Returns:
        ``(losses, ctx)``: losses ``(B,)`` in the compute dtype (float32, float64 for
        float64 logits); ``ctx`` is None unless ``need_grad``.
    """
    packed = v.check_choice("layout", layout, ("padded", "packed")) == "packed"
    V = v.logits_shapes(logits, targets, logit_lengths, target_lengths, packed)
    io = _arrays.boundary([("logits", logits)], [("targets", targets),
                                                  ("logit_lengths", logit_lengths),
                                                  ("target_lengths", target_lengths)])
    logits, targets, logit_lengths, target_lengths = map(
        io.to_core, (logits, targets, logit_lengths, target_lengths))
    topo, clamp, lam = common_scalars(V, blank, clamp, fastemit_lambda, variant_args(
        variant, delay_penalty, durations, big_blank_durations, sigma, omega))
    need_grad = v.check_bool("need_grad", need_grad)
    be = get_backend(backend, logits)
    xp = be.xp
    v.check_array_module("logits", logits, be)  # finiteness: checked on the row statistics
    defer = defers_host_checks(be)
    T_max = logits.shape[0] if packed else logits.shape[1]
    t_len, u_len, targets = v.check_values("logit_lengths", logit_lengths, target_lengths,
                                           targets, T_max, topo, V, labels_on_host=not defer)
    plan = make_plan(t_len, u_len)
    if packed and logits.shape[0] != plan.rows:
        if defer:  # the labels first, as the eager checks (a read on this error path only)
            _check_labels_on_host(targets, plan, topo, V)
        raise ValueError(f"logits: expected {plan.rows} rows (sum of T_b * (U_b + 1)) for the "
                         f"packed layout, got shape {tuple(logits.shape)}")
    logits, targets = _contiguous(xp, "logits", logits), xp.asarray(targets)
    losses, ctx = _run_logits(defer, be, logits, targets, plan, topo, packed=packed,
                              fastemit_lambda=lam, clamp=clamp, need_grad=need_grad)
    if ctx is not None:
        ctx.io = io
    return io.from_core(losses), ctx


def rnnt_loss_backward(ctx, grad_losses):
    """dLoss/dlogits for upstream gradients ``grad_losses`` ``(B,)``; logits' shape and dtype,
    the caller's kind of array."""
    _check_context(ctx, (orch.LogitsContext,), "rnnt_loss_forward")
    io = ctx.io or _arrays.NATIVE
    with io.scope():
        return io.from_core(orch.logits_backward(ctx, _upstream_in(io, grad_losses)))


@_arrays.on_data_device
def rnnt_loss(logits, targets, logit_lengths, target_lengths, *, blank: int = 0,
              reduction: str = "mean", clamp: float | None = None,
              fastemit_lambda: float = 0.0, layout: str = "padded", return_grad: bool = False,
              variant: str = "rnnt", delay_penalty: float = 0.0, durations=None,
              big_blank_durations=None, sigma: float = 0.0, omega: float = 0.0, backend=None):
    """Transducer loss on logits (torchaudio names and ``reduction``; see
    ``rnnt_loss_forward``, also for ``variant`` and its arguments).

    ``reduction``: ``"none"`` -> ``(B,)``, ``"mean"`` -> mean over the batch, ``"sum"``.
    With ``return_grad=True`` returns ``(loss, grad_logits)``, the gradient of the reduced
    loss (of the sum of the losses for ``"none"``).
    """
    v.check_choice("reduction", reduction, v.REDUCTIONS)
    return_grad = v.check_bool("return_grad", return_grad)
    losses, ctx = rnnt_loss_forward(logits, targets, logit_lengths, target_lengths, blank=blank,
                                    clamp=clamp, fastemit_lambda=fastemit_lambda, layout=layout,
                                    need_grad=return_grad, backend=backend,
                                    **variant_args(variant, delay_penalty, durations,
                                                   big_blank_durations, sigma, omega))
    loss = v.reduce_losses(losses, reduction)
    if not return_grad:
        return loss
    xp = ctx.backend.xp
    up = _upstream(xp, ctx.plan.batch, reduction, ctx.coefs.dtype)
    return loss, ctx.io.from_core(orch.logits_backward(ctx, up))


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
    status: Any = None  # checks="device": the status word the call ORed its flags into


@dataclass
class ReducedContext:
    """One-pass context: the gradients of the reduced loss, computed in the forward; the
    backward only scales them by the upstream scalar."""

    grads: tuple
    reduction: str
    needs: tuple
    io: Any = _arrays.NATIVE
    xp: Any = np  # the gradients' array module
    factors: tuple = (1.0, 1.0, 1.0, 1.0)  # reduced_grad_factors


def reduced_grad_factors(reduction: str, dtype, batch: int) -> tuple:
    """Factors that the one-pass gradients (d_enc, d_pred, dW, db) still owe the reduced
    loss's, applied by the backward with the upstream gradient (in float32, one rounding).

    16-bit inputs with ``"mean"``: d_enc/d_pred are kept as gradients of the *sum* of the
    losses (each sample's own magnitude: 1/B would push a large batch's float16 entries
    into the subnormals, whose lost bits no loss scale restores), so they owe 1/B; dW/db,
    sums over the batch accumulated in float32, take 1/B before their rounding and owe 1.
    Otherwise nothing is owed."""
    if reduction == "mean" and DTYPES[dtype_name(dtype)].itemsize == 2:
        return (1.0 / batch, 1.0 / batch, 1.0, 1.0)
    return (1.0, 1.0, 1.0, 1.0)


def one_pass_scales(reduction: str, owed: tuple, batch: int) -> dict:
    """``_fused.one_pass``'s ``scale`` and ``w_scale`` for a reduction whose gradients owe
    ``owed`` (``reduced_grad_factors``): dLoss/dz carries what d_enc/d_pred do not owe,
    dW/db take the rest before their rounding."""
    scale = 1.0 / batch if reduction == "mean" else 1.0
    return dict(scale=scale / owed[0], w_scale=owed[0] / owed[2])


@dataclass
class _FusedCall:
    """A validated fused call, in the core's arrays."""

    backend: Any
    inputs: _fused.FusedInputs
    targets: Any
    plan: Any
    budget: int
    sample_wise: bool
    io: Any
    status: Any  # the core's status word (checks="device": the caller's), else None
    status_out: Any  # the caller's status word (checks="device"), else None
    deferred: bool = False  # checks="host" on device arrays: checked at the end


def _fused_call(enc, pred, weight, bias, targets, enc_lengths, target_lengths, activation,
                blank, clamp, fastemit_lambda, max_workspace_bytes, sample_wise, allow_tf32,
                backend, checks, status, variants: dict) -> _FusedCall:
    """Validate a fused call (``checks="host"``: everything now, or for device arrays the
    lengths now and the rest at the end, ``_run_checked``; ``"device"``: no host read --
    lengths on the host, labels and results checked into ``status``)."""
    V = v.fused_shapes(enc, pred, weight, bias, targets, enc_lengths, target_lengths)
    on_host = v.check_checks(checks, status) == "host"
    io = _arrays.boundary([("enc", enc), ("pred", pred), ("weight", weight), ("bias", bias)],
                          [("targets", targets), ("enc_lengths", enc_lengths),
                           ("target_lengths", target_lengths)])
    enc, pred, weight, bias, targets, enc_lengths, target_lengths = map(
        io.to_core, (enc, pred, weight, bias, targets, enc_lengths, target_lengths))
    act = ACTIVATIONS[v.check_choice("activation", activation, v.ACTIVATION_NAMES)]
    topo, clamp, lam = common_scalars(V, blank, clamp, fastemit_lambda, variants)
    budget = v.check_workspace(max_workspace_bytes)
    sample_wise = v.check_bool("sample_wise", sample_wise)
    tf32 = v.check_bool("allow_tf32", allow_tf32)
    be = get_backend(backend, enc)
    xp = be.xp
    floats = (("enc", enc), ("pred", pred), ("weight", weight), ("bias", bias))
    for name, x in floats:
        v.check_array_module(name, x, be)
    defer = on_host and defers_host_checks(be)
    t_len, u_len, _ = v.check_values("enc_lengths", enc_lengths, target_lengths, targets,
                                     enc.shape[1], topo, V, labels_on_host=on_host and not defer,
                                     lengths_on_host=not on_host)
    if on_host and not defer:
        v.check_finite(floats, xp)
    f = _fused.FusedInputs(*(_contiguous(xp, n, x) for n, x in floats),
        activation=act, topo=topo, fastemit_lambda=lam, clamp=clamp, tf32=tf32)
    status_core = None
    if defer:  # an internal status word, read once at the end (_run_checked)
        status_core = _status.new_status(xp)
    elif not on_host:
        if io.kind == "jax":
            raise TypeError("checks: 'device' ORs flags into a status array in place, and JAX "
                            "arrays are immutable; pass NumPy, CuPy or PyTorch arrays (or "
                            "use checks='host')")
        if status is None:
            status = io.from_core(_status.new_status(xp))
        status_core = io.to_core(status)
        _status.check_status_array(status_core, xp)
        be.prepare_capture()  # the call may be captured in a CUDA graph
    # the caller's targets (device ones as they are: the host copy checked is not uploaded)
    return _FusedCall(be, f, xp.asarray(targets), make_plan(t_len, u_len), budget,
                      sample_wise, io, status_core, status, defer)


def defers_host_checks(backend) -> bool:
    """``checks="host"`` on device arrays (CuPy): the checks after the lengths run on the
    device and their flags are read back once, at the end of the call (``_run_checked``;
    the fused op: labels, float inputs' NaN/inf; ``rnnt_loss``: labels, rows), instead of
    reads before and during the work; host arrays are checked at once (no read to save)."""
    return backend.xp is not np


def _named_floats(f: _fused.FusedInputs) -> tuple:
    return (("enc", f.enc), ("pred", f.pred), ("weight", f.weight), ("bias", f.bias))


def _check_labels_on_host(targets, plan, topo, n_logits: int) -> None:
    """The labels' check on a host copy (a read of device labels)."""
    v.check_targets(v.to_host(targets), plan.target_len, topo.vocab(n_logits), topo.blanks)


def _run_checked(status, work, host_checks):
    """``work()`` with deferred host checks (``checks="host"`` on device arrays,
    ``defers_host_checks``): the work ORs its checks' flags into the internal ``status``
    word, which is read back once, at the end. A flagged call -- or one whose work raised
    -- then runs ``host_checks(flags)`` (``flags`` None if the work raised), which raises
    the error that the checks before the work raise, in their order. Kernels never read a
    label outside [0, V), so a bad call computes garbage, not a crash, and raises before it
    returns."""
    try:
        out = work()
    except Exception:
        host_checks(None)
        raise
    flags = int(v.host_read(status))
    if flags:
        host_checks(flags)
        _status.raise_for_status(status)  # not reached: every flag has its host check
    return out


def _run_fused(call: _FusedCall, work):
    """``work(log_like)``, ``log_like`` (B,) for the work to fill, or None (not deferred).
    Deferred (``call.deferred``): the labels' kernel check (at the start of the work), the
    float inputs' NaN/inf flag (after the work is enqueued), the log-likelihoods' flag;
    the host checks of a flagged call: labels, inputs, log-likelihoods."""
    if not call.deferred:
        return work(None)
    f, xp = call.inputs, call.backend.xp
    log_like = xp.empty(call.plan.batch, dtype=compute_dtype(f.enc.dtype))
    floats = _named_floats(f)

    def enqueue():
        out = work(log_like)
        _status.flag_non_finite_inputs(call.status, [x for _, x in floats], xp)
        return out

    def host_checks(flags):
        _check_labels_on_host(call.targets, call.plan, f.topo, f.sizes[1])
        v.check_finite(floats, xp)
        if flags:
            _fused.check_fused_log_likelihood(log_like, xp)
    return _run_checked(call.status, enqueue, host_checks)


def _run_logits(defer: bool, be, logits, targets, plan, topo, **kw):
    """``orch.logits_forward(be, logits, targets, plan, topo, **kw)`` with host checks
    (raising), or deferred (``defer``: device arrays): the labels' kernel check, the rows'
    and the log-likelihoods' flags in a status word read once at the end; the host checks
    of a flagged call: labels, rows, log-likelihoods."""
    if not defer:
        return orch.logits_forward(be, logits, targets, plan, topo, **kw)
    xp, cdt = be.xp, compute_dtype(logits.dtype)
    status = _status.new_status(xp)
    log_likes = (xp.empty(plan.batch, dtype=cdt),
                 xp.empty(plan.batch, dtype=cdt) if topo.omega else None)

    def host_checks(flags):
        _check_labels_on_host(targets, plan, topo, int(logits.shape[-1]))
        if flags and flags & _status.NON_FINITE_ROWS:
            raise ValueError(v.LOG_PROBS_ERROR)
        for ll in log_likes if flags else ():
            if ll is not None:
                v.check_log_likelihood(ll, xp)
    return _run_checked(status, lambda: orch.logits_forward(
        be, logits, targets, plan, topo, status=status, log_likes=log_likes, **kw),
        host_checks)


def _check_needs(needs) -> tuple:
    if len(needs) != 4:
        raise ValueError(f"needs: expected 4 flags (enc, pred, weight, bias), got {len(needs)}")
    return tuple(bool(n) for n in needs)


@_arrays.on_data_device
def transducer_forward(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *,
                       activation: str = "tanh", blank: int = 0, clamp: float | None = None,
                       fastemit_lambda: float = 0.0,
                       max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                       sample_wise: bool = False, need_grad: bool = True,
                       reduction: str = "none", needs=ALL_GRADS, allow_tf32: bool = False,
                       checks: str = "host", status=None, variant: str = "rnnt",
                       delay_penalty: float = 0.0, durations=None, big_blank_durations=None,
                       sigma: float = 0.0, omega: float = 0.0, backend=None):
    """Per-sample losses of the fused joint network + transducer loss, and the backward
    context (``variant`` and its arguments as in ``rnnt_loss_forward``; TDT: ``weight``
    and ``bias`` hold the token rows then the duration rows).

    ``z(b,t,u) = act(enc[b,t] + pred[b,u]) @ weight.T + bias`` is computed in row chunks
    of the packed lattice whose workspace fits ``max_workspace_bytes`` (see
    ``cutrans._fused``); ``sample_wise=True`` keeps each chunk inside one utterance (the
    seed paper's schedule).

    Args:
        enc: ``(B, T, H)`` projected encoder output; pred: ``(B, U+1, H)`` projected
            prediction-network output; weight: ``(V, H)``; bias: ``(V,)``; all one dtype.
        targets: ``(B, U)`` labels; enc_lengths ``(B,)`` in [1, T]; target_lengths in [0, U].
        activation: ``"tanh"`` | ``"relu"`` | ``"identity"``.
        reduction: what the backward will receive. ``"none"``: a per-sample upstream
            gradient ``(B,)`` -- the forward keeps 2 floats per lattice row and the backward
            recomputes the logits. ``"mean"``/``"sum"``: the upstream gradient of the
            reduced loss, a scalar -- every gradient is computed during the forward in one
            pass (only ``needs``), and the backward scales them.
        allow_tf32: float32 inputs only: let the GEMMs round their inputs to TF32 (tensor
            cores, ~10-bit mantissa). Off by default: float32 is exact float32.
        checks: ``"host"`` (default): every input is checked and a bad one raises before
            the call returns -- host arrays before the work; device arrays have their
            lengths read first, their labels and NaN/inf flags checked on the device and
            read back once at the end (``defers_host_checks``). ``"device"``: no
            device-to-host read at all -- the lengths must be host arrays; labels are
            checked by a kernel and non-finite results flagged, into ``status`` (see
            ``cutrans.raise_for_status``).
        status: ``checks="device"`` only: an int32 array of shape () on the data's device
            (writable: NumPy, CuPy, PyTorch) that the call ORs its flags into (0: fine);
            required for ``transducer_forward`` in that mode.
    Returns:
        ``(losses (B,), ctx)``; ctx is None unless ``need_grad``.
    """
    v.check_choice("reduction", reduction, v.REDUCTIONS)
    need_grad = v.check_bool("need_grad", need_grad)
    if checks == "device" and status is None:
        raise TypeError("status: checks='device' needs the caller's status array (int32, "
                        "shape ()) for transducer_forward")
    call = _fused_call(enc, pred, weight, bias, targets, enc_lengths, target_lengths,
                       activation, blank, clamp, fastemit_lambda, max_workspace_bytes,
                       sample_wise, allow_tf32, backend, checks, status,
                       variant_args(variant, delay_penalty, durations, big_blank_durations,
                                    sigma, omega))
    return _forward(call, need_grad, reduction, _check_needs(needs))


def _forward(call: _FusedCall, need_grad: bool, reduction: str, needs: tuple):
    be, f, plan, io = call.backend, call.inputs, call.plan, call.io
    kw = dict(max_workspace_bytes=call.budget, sample_wise=call.sample_wise,
              status=call.status)
    if need_grad and reduction != "none" and any(needs):
        owed = reduced_grad_factors(reduction, f.enc.dtype, plan.batch)
        losses, grads = _run_fused(call, lambda log_like: _fused.one_pass(
            be, f, call.targets, plan, **one_pass_scales(reduction, owed, plan.batch),
            needs=needs, log_like=log_like, **kw))
        return io.from_core(losses), ReducedContext(grads, reduction, needs, io, be.xp, owed)
    losses, ctx = _run_fused(call, lambda log_like: _fused.forward(
        be, f, call.targets, plan, need_grad=need_grad, log_like=log_like, **kw))
    if ctx is not None:
        ctx.io = io
    return io.from_core(losses), ctx


#: elements of a 16-bit gradient scaled per step (``_scale``): a 64 MiB float32 temporary
SCALE_PIECE = 1 << 24


def _scale(xp, grad, g, owed: float = 1.0, in_place: bool = False):
    """``grad * g * owed`` (g a number or a one-element array; ``owed``: a
    ``reduced_grad_factors`` entry) computed in the compute dtype and rounded once into
    grad's dtype: a loss scale such as 2**16 (``torch.amp.GradScaler``'s) does not fit
    float16, and bfloat16 would round ``g``. 16-bit gradients are scaled ``SCALE_PIECE``
    elements at a time (a bounded float32 temporary). Out of place (a backward may run
    twice on one context) unless ``in_place``."""
    cdt = compute_dtype(grad.dtype)
    if isinstance(g, numbers.Real):
        if g * owed == 1:
            return grad
        s = float(g) * owed  # a weak Python scalar: products keep the compute-dtype operand's
    else:
        s = g.reshape(()).astype(cdt) * cdt.type(owed)
    out = grad if in_place else None
    if np.dtype(grad.dtype) == cdt:
        return xp.multiply(grad, s, out=out)
    out = xp.empty_like(grad) if out is None else out
    src, dst = grad.reshape(-1), out.reshape(-1)
    with np.errstate(over="ignore"):  # an overflow is the true product's (a loss scaler's cue)
        tmp = xp.empty(min(src.size, SCALE_PIECE), dtype=cdt)  # one piece, reused
        for i in range(0, src.size, SCALE_PIECE):
            piece = tmp[:min(SCALE_PIECE, src.size - i)]
            piece[...] = src[i:i + SCALE_PIECE]
            piece *= s
            dst[i:i + SCALE_PIECE] = piece
    return out


def transducer_backward(ctx, grad_losses, needs=ALL_GRADS) -> TransducerGrads:
    """Gradients for the upstream gradient of the forward's ``reduction``.

    ``"none"`` contexts take ``grad_losses`` ``(B,)`` per sample; one-pass contexts
    (``"mean"``/``"sum"``) take the scalar upstream gradient of the reduced loss (a number
    or a one-element array) and scale the gradients computed in the forward (out of place;
    returned as they are for ``1``). ``needs``: flags for (enc, pred, weight, bias);
    unneeded gradients come back as None and their work is skipped.
    """
    _check_context(ctx, (ReducedContext, _fused.FusedContext), "transducer_forward")
    needs = _check_needs(needs)
    io = ctx.io or _arrays.NATIVE
    with io.scope():
        return _backward(ctx, grad_losses, needs, io)


def _check_context(ctx, types: tuple, forward: str) -> None:
    if not isinstance(ctx, types):
        raise TypeError(f"ctx: expected the context that {forward}(..., need_grad=True) "
                        f"returns, got {type(ctx).__name__}")


def _backward(ctx, grad_losses, needs, io) -> TransducerGrads:
    if isinstance(ctx, ReducedContext):
        missing = [n for n, want, have in zip(("enc", "pred", "weight", "bias"), needs,
                                              ctx.needs) if want and not have]
        if missing:
            raise ValueError(f"needs: the forward computed no gradient for {', '.join(missing)}")
        if not isinstance(grad_losses, numbers.Real) and getattr(grad_losses, "size", 0) != 1:
            raise ValueError(f"grad_losses: expected the scalar upstream gradient of the "
                             f"{ctx.reduction}-reduced loss, got shape "
                             f"{tuple(getattr(grad_losses, 'shape', ()))}")
        g_in = _upstream_in(io, grad_losses)
        return TransducerGrads(*(None if g is None or not want
                                 else io.from_core(_scale(ctx.xp, g, g_in, owed))
                                 for g, want, owed in zip(ctx.grads, needs, ctx.factors)))
    grads = _fused.backward(ctx, _upstream_in(io, grad_losses), needs)
    return TransducerGrads(*map(io.from_core, grads))


@_arrays.on_data_device
def transducer_loss(enc, pred, weight, bias, targets, enc_lengths, target_lengths, *,
                    activation: str = "tanh", blank: int = 0, reduction: str = "mean",
                    clamp: float | None = None, fastemit_lambda: float = 0.0,
                    max_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                    sample_wise: bool = False, compute_grad: bool = True,
                    allow_tf32: bool = False, checks: str = "host", status=None,
                    variant: str = "rnnt", delay_penalty: float = 0.0, durations=None,
                    big_blank_durations=None, sigma: float = 0.0, omega: float = 0.0,
                    backend=None) -> TransducerOutput:
    """Fused loss and (if ``compute_grad``) the gradients of the reduced loss (of the sum
    for ``"none"``), computed in one pass over the batch.

    See ``transducer_forward`` for shapes, ``checks`` and ``status`` (created here when
    ``checks="device"`` and None, and returned as ``.status``); ``reduction`` as in
    ``rnnt_loss``.
    """
    v.check_choice("reduction", reduction, v.REDUCTIONS)
    compute_grad = v.check_bool("compute_grad", compute_grad)
    call = _fused_call(enc, pred, weight, bias, targets, enc_lengths, target_lengths,
                       activation, blank, clamp, fastemit_lambda, max_workspace_bytes,
                       sample_wise, allow_tf32, backend, checks, status,
                       variant_args(variant, delay_penalty, durations, big_blank_durations,
                                    sigma, omega))
    losses, ctx = _forward(call, compute_grad, "sum" if reduction == "none" else reduction,
                           ALL_GRADS)
    grads = None
    if compute_grad:
        grads = TransducerGrads(*(ctx.io.from_core(_scale(ctx.xp, g, 1.0, owed, in_place=True))
                                  for g, owed in zip(ctx.grads, ctx.factors)))
    return TransducerOutput(v.reduce_losses(losses, reduction), grads, call.status_out)
