"""Input validation for every entry point (core, PyTorch and JAX adapters): one rule per
argument, one message naming the argument, what was expected and what came.

Shape/dtype checks work on any array with ``shape``/``dtype`` (NumPy, CuPy, torch, JAX,
tracers included), so adapters run them at trace time. Value checks (lengths, labels) run
on host copies (the row plan needs the lengths on the host anyway); both losses on device
arrays read only the lengths first and check their labels on the device, reading them only
when flagged (``api._run_checked``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._dtypes import DTYPES, INDEX_DTYPES, dtype_name, is_float_dtype

REDUCTIONS = ("none", "mean", "sum")
ACTIVATION_NAMES = ("tanh", "relu", "identity")
CHECKS = ("host", "device")


# ------------------------------------------------------------------ scalars
def check_choice(name: str, value, choices):
    want = ", ".join(map(repr, choices))
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, one of {want}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {want}, got {value!r}")
    return value


def check_scalar(name: str, value, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}: expected a finite number >= {minimum}, got {value}")
    return float(value)


def check_checks(checks, status) -> str:
    """``checks`` is ``"host"`` or ``"device"``; a ``status`` word only with ``"device"``."""
    check_choice("checks", checks, CHECKS)
    if checks == "host" and status is not None:
        raise ValueError("status: only with checks='device'")
    return checks


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def normalize_clamp(clamp) -> float:
    """torchaudio's rule: ``None`` or ``clamp <= 0`` means no clamping (-> 0.0)."""
    if clamp is None:
        return 0.0
    if isinstance(clamp, bool) or not isinstance(clamp, numbers.Real):
        raise TypeError(f"clamp: expected a real number or None, got {type(clamp).__name__}")
    c = float(clamp)
    if math.isnan(c) or c == math.inf:  # pure Python: traceable by torch.compile
        raise ValueError(f"clamp: expected a finite number (<= 0 disables), got {clamp}")
    return c if c > 0 else 0.0


def check_int(name: str, value) -> int:
    """An integer argument (Python or NumPy; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def normalize_blank(blank, vocab: int) -> int:
    """blank in [-V, V); negative values count from the end (torchaudio's -1 = V - 1)."""
    check_int("blank", blank)
    if not -vocab <= blank < vocab:
        raise ValueError(f"blank: expected a label id in [{-vocab}, {vocab}) for V={vocab}, got {blank}")
    return int(blank) % vocab


def check_workspace(max_workspace_bytes) -> int:
    return check_int("max_workspace_bytes", max_workspace_bytes)


def reduce_losses(losses, reduction: str):
    """``none`` -> (B,), ``mean`` over the batch, ``sum``: for any array type."""
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


# ------------------------------------------------------------------ arrays
def host_read(x) -> np.ndarray:
    """THE device-to-host read of the library: every value the host needs from an array
    that may live on a device (lengths, labels, check results) comes through here (and so
    does the equivalent read of a NumPy array). ``checks="device"`` calls never reach it."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_host(x) -> np.ndarray:
    """A NumPy view of a host array, or a host copy (``host_read``) of a device array."""
    return x if isinstance(x, np.ndarray) else host_read(x)


def host_true(flag) -> bool:
    """The host value of a boolean array result (a check): a device-to-host read."""
    return bool(host_read(flag))


def check_array(name: str, x, *, kind: str, ndim: int, shape_doc: str):
    """Type, dtype kind ('float' | 'index') and ndim of an array argument."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    dn = dtype_name(x.dtype)
    if kind == "float" and (not is_float_dtype(x.dtype) or DTYPES[dn][0] is None):
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {dn}")
    if kind == "index" and dn not in INDEX_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {dn}")
    if len(x.shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {shape_doc}, got shape {tuple(x.shape)}")


def check_dim(name: str, x, axis: int, expected: int, what: str):
    if x.shape[axis] != expected:
        raise ValueError(
            f"{name}: expected size {expected} ({what}) at dimension {axis}, got shape "
            f"{tuple(x.shape)}")


def check_batch(name: str, batch: int):
    if batch < 1:
        raise ValueError(f"{name}: expected at least one sample (B >= 1), got B={batch}")


def check_same_dtype(name: str, x, ref_name: str, ref):
    if dtype_name(x.dtype) != dtype_name(ref.dtype):
        raise TypeError(f"{name}: expected the dtype of {ref_name} ({dtype_name(ref.dtype)}), "
                        f"got {dtype_name(x.dtype)}")


def check_length_arrays(t_name: str, logit_lengths, target_lengths, targets, batch: int):
    check_array("targets", targets, kind="index", ndim=2, shape_doc="(B, U)")
    check_dim("targets", targets, 0, batch, "batch size B")
    for name, x in ((t_name, logit_lengths), ("target_lengths", target_lengths)):
        check_array(name, x, kind="index", ndim=1, shape_doc="(B,)")
        check_dim(name, x, 0, batch, "batch size B")


def logits_shapes(logits, targets, logit_lengths, target_lengths, packed: bool = False) -> int:
    """Shapes and dtypes of the loss-on-logits arguments; returns V."""
    check_array("logits", logits, kind="float", ndim=2 if packed else 4,
                shape_doc="(rows, V)" if packed else "(B, T, U+1, V)")
    check_array("targets", targets, kind="index", ndim=2, shape_doc="(B, U)")
    B = targets.shape[0]
    check_batch("targets", B)
    if not packed:
        check_dim("logits", logits, 0, B, "batch size B of targets")
        check_dim("logits", logits, 2, targets.shape[1] + 1, "U+1, from targets' width U")
    check_length_arrays("logit_lengths", logit_lengths, target_lengths, targets, B)
    return int(logits.shape[-1])


def fused_shapes(enc, pred, weight, bias, targets, enc_lengths, target_lengths) -> int:
    """Shapes and dtypes of the fused op's arguments; returns V."""
    check_array("enc", enc, kind="float", ndim=3, shape_doc="(B, T, H)")
    check_array("pred", pred, kind="float", ndim=3, shape_doc="(B, U+1, H)")
    check_array("weight", weight, kind="float", ndim=2, shape_doc="(V, H)")
    check_array("bias", bias, kind="float", ndim=1, shape_doc="(V,)")
    check_array("targets", targets, kind="index", ndim=2, shape_doc="(B, U)")
    for name, x in (("pred", pred), ("weight", weight), ("bias", bias)):
        check_same_dtype(name, x, "enc", enc)
    B, _, H = enc.shape
    check_batch("enc", B)
    if H < 1:
        raise ValueError("enc: expected a hidden size H >= 1 (enc's last dimension), got 0")
    check_dim("pred", pred, 0, B, "batch size B of enc")
    check_dim("pred", pred, 1, targets.shape[1] + 1, "U+1, from targets' width U")
    check_dim("pred", pred, 2, H, "hidden size H of enc")
    check_dim("targets", targets, 0, B, "batch size B of enc")
    check_dim("weight", weight, 1, H, "hidden size H of enc")
    check_dim("bias", bias, 0, weight.shape[0], "vocabulary size V of weight")
    check_length_arrays("enc_lengths", enc_lengths, target_lengths, targets, B)
    return int(weight.shape[0])


# ------------------------------------------------------------------ values (host)
def check_range(name: str, values: np.ndarray, low: int, high: int, what: str):
    """All values in [low, high]; the message gives the first offending sample."""
    bad = np.flatnonzero((values < low) | (values > high))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}: expected {what} in [{low}, {high}], got {int(values[i])} "
                         f"for sample {i}")


def check_targets(targets: np.ndarray, target_len: np.ndarray, vocab: int, blanks: tuple):
    """Labels within each valid length lie in [0, V) and are no blank symbol."""
    width = targets.shape[1]
    valid = np.arange(width)[None, :] < target_len[:, None]
    bad = valid & ((targets < 0) | (targets >= vocab))
    if bad.any():
        b, u = map(int, np.argwhere(bad)[0])
        raise ValueError(f"targets: expected labels in [0, {vocab}), got {int(targets[b, u])} at "
                         f"sample {b}, position {u}")
    bad = valid & np.isin(targets, blanks)
    if bad.any():
        b, u = map(int, np.argwhere(bad)[0])
        what = f"blank ({blanks[0]})" if len(blanks) == 1 else f"blank symbol {list(blanks)}"
        found = "it" if len(blanks) == 1 else str(int(targets[b, u]))
        raise ValueError(f"targets: expected no {what} within target_lengths, found {found} "
                         f"at sample {b}, position {u}")


def check_values(t_name: str, logit_lengths, target_lengths, targets, max_frames: int,
                 topo, n_logits: int, labels_on_host: bool = True,
                 lengths_on_host: bool = False):
    """Host copies of (lengths, labels) after checking their values: (t_len, u_len, targets).

    ``topo`` (``cutrans._topology.Topology``) gives the blank ids and the token vocabulary
    among the ``n_logits`` logits per row; ``variant="modified"`` needs ``U_b <= T_b``.

    ``labels_on_host=False``: ``targets`` is returned as it is, unread (a kernel checks it
    on the device: ``checks="device"``, or the deferred host checks of a device call);
    ``lengths_on_host=True`` (``checks="device"``): the lengths must be host arrays."""
    if lengths_on_host:
        for name, x in ((t_name, logit_lengths), ("target_lengths", target_lengths)):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{name}: checks='device' needs the lengths on the host "
                                f"(NumPy or CPU arrays); reading device lengths synchronises")
    t_len = to_host(logit_lengths).astype(np.int64)
    check_range(t_name, t_len, 1, max_frames, "frame counts")
    u_len = to_host(target_lengths).astype(np.int64)
    check_range("target_lengths", u_len, 0, targets.shape[1], "label counts")
    if topo.variant == "modified" and (u_len > t_len).any():
        i = int(np.flatnonzero(u_len > t_len)[0])
        raise ValueError(f"target_lengths: variant='modified' emits at most one label per "
                         f"frame, so it needs U_b <= T_b; got U_b={int(u_len[i])} > "
                         f"T_b={int(t_len[i])} for sample {i}")
    if not labels_on_host:
        return t_len, u_len, targets
    host_targets = to_host(targets)
    check_targets(host_targets, u_len, topo.vocab(n_logits), topo.blanks)
    return t_len, u_len, host_targets


def finite_flags(arrays, xp):
    """A device (n,) bool array: array i holds no NaN/inf (its sum, accumulated in float32,
    float64 for float64, is finite); no read."""
    return xp.stack([xp.isfinite(x.sum(dtype=xp.float64 if dtype_name(x.dtype) == "float64"
                                       else xp.float32)) for x in arrays])


def check_finite(named, xp):
    """No NaN/inf in any array of the ``(name, array)`` pairs, in O(1) extra memory (a NaN
    or inf anywhere makes the sum, accumulated in float32/float64, non-finite) and one
    device-to-host read for all of them; the error names the first bad one."""
    finite = host_read(finite_flags([x for _, x in named], xp)) if named else ()
    for (name, _), ok in zip(named, finite):
        if not ok:
            raise ValueError(f"{name}: expected finite values, found NaN or infinity")


LOG_PROBS_ERROR = ("logits: expected finite values (-inf only for masked labels other than "
                   "blank), found NaN or +inf, or -inf at blank")


def check_log_probs(lp_blank, xp):
    """Logits may hold -inf for masked labels, but every row needs a finite blank
    log-probability: NaN, +inf, or an all -inf row / -inf blank end up here (O(rows))."""
    if not host_true(xp.isfinite(lp_blank).all()):
        raise ValueError(LOG_PROBS_ERROR)


def check_log_likelihood(log_like, xp):
    if not host_true(xp.isfinite(log_like).all()):
        b = int(host_read(xp.flatnonzero(~xp.isfinite(log_like))[0]))
        raise ValueError(f"logits: no alignment of sample {b} has a nonzero probability "
                         f"(a target label masked with -inf?)")


def check_array_module(name: str, x, backend):
    """Float inputs must live where the backend computes (NumPy vs CuPy arrays)."""
    mod = type(x).__module__.split(".")[0]
    want = backend.xp.__name__
    if mod != want:
        raise TypeError(f"{name}: expected a {want} array for the {backend.name} backend, got "
                        f"{type(x).__module__}.{type(x).__name__}")


def upstream_gradient(grad_losses, batch: int, xp, dtype):
    """``grad_losses`` as a contiguous (B,) array of the compute dtype."""
    g = xp.asarray(grad_losses, dtype=dtype)
    if g.shape != (batch,):
        raise ValueError(f"grad_losses: expected shape ({batch},) (one upstream gradient per "
                         f"sample), got {tuple(g.shape)}")
    return xp.ascontiguousarray(g)
