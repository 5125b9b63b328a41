"""Input validation: every message names the argument, what was expected and what came.

Integer inputs (lengths, targets) are inspected on the host: for device arrays this is
the op's one host synchronisation (the row plan needs the lengths on the host anyway).
"""
from __future__ import annotations

import numbers

import numpy as np

from ._dtypes import DTYPES, INDEX_DTYPES, dtype_name, is_float_dtype

REDUCTIONS = ("none", "mean", "sum")


def to_host(x) -> np.ndarray:
    """A NumPy copy/view of a NumPy or CuPy array."""
    get = getattr(x, "get", None)
    return get() if callable(get) and not isinstance(x, np.ndarray) else np.asarray(x)


def check_array(name: str, x, *, kind: str, ndim: int, shape_doc: str):
    """Type, dtype kind ('float' | 'index') and ndim of an array argument."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    dn = dtype_name(x.dtype)
    if kind == "float" and (not is_float_dtype(x.dtype) or DTYPES[dn][0] is None):
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {dn}")
    if kind == "index" and dn not in INDEX_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {dn}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {shape_doc}, got shape {tuple(x.shape)}")


def check_dim(name: str, x, axis: int, expected: int, what: str):
    if x.shape[axis] != expected:
        raise ValueError(
            f"{name}: expected size {expected} ({what}) at dimension {axis}, got shape "
            f"{tuple(x.shape)}")


def check_range(name: str, values: np.ndarray, low: int, high: int, what: str):
    """All values in [low, high]; the message gives the first offending sample."""
    bad = np.flatnonzero((values < low) | (values > high))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}: expected {what} in [{low}, {high}], got {int(values[i])} "
                         f"for sample {i}")


def check_targets(targets: np.ndarray, target_len: np.ndarray, vocab: int, blank: int):
    """Labels within each valid length lie in [0, V) and differ from blank."""
    width = targets.shape[1]
    valid = np.arange(width)[None, :] < target_len[:, None]
    bad = valid & ((targets < 0) | (targets >= vocab))
    if bad.any():
        b, u = map(int, np.argwhere(bad)[0])
        raise ValueError(f"targets: expected labels in [0, {vocab}), got {int(targets[b, u])} at "
                         f"sample {b}, position {u}")
    bad = valid & (targets == blank)
    if bad.any():
        b, u = map(int, np.argwhere(bad)[0])
        raise ValueError(f"targets: expected no blank ({blank}) within target_lengths, found it at "
                         f"sample {b}, position {u}")


def check_finite(name: str, x, xp):
    """No NaN/inf in ``x``, in O(1) extra memory: a NaN or inf anywhere makes the sum
    (accumulated in float32/float64) non-finite."""
    acc = xp.float64 if dtype_name(x.dtype) == "float64" else xp.float32
    if not bool(xp.isfinite(x.sum(dtype=acc))):
        raise ValueError(f"{name}: expected finite values, found NaN or infinity")


def check_log_probs(lp_blank, xp):
    """Logits may hold -inf for masked labels, but every row needs a finite blank
    log-probability: NaN, +inf, or an all -inf row / -inf blank end up here (O(rows))."""
    if not bool(xp.isfinite(lp_blank).all()):
        raise ValueError("logits: expected finite values (-inf only for masked labels other "
                         "than blank), found NaN or +inf, or -inf at blank")


def check_log_likelihood(log_like, xp):
    if not bool(xp.isfinite(log_like).all()):
        b = int(xp.flatnonzero(~xp.isfinite(log_like))[0])
        raise ValueError(f"logits: no alignment of sample {b} has a nonzero probability "
                         f"(a target label masked with -inf?)")


def check_batch(name: str, batch: int):
    if batch < 1:
        raise ValueError(f"{name}: expected at least one sample (B >= 1), got B={batch}")


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


def check_scalar(name: str, value, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name}: expected a finite number >= {minimum}, got {value}")
    return float(value)


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def normalize_blank(blank, vocab: int) -> int:
    """blank in [-V, V); negative values count from the end (torchaudio's -1 = V - 1)."""
    if isinstance(blank, bool) or not isinstance(blank, numbers.Integral):
        raise TypeError(f"blank: expected an int, got {type(blank).__name__}")
    if not -vocab <= blank < vocab:
        raise ValueError(f"blank: expected a label id in [{-vocab}, {vocab}) for V={vocab}, got {blank}")
    return int(blank) % vocab


def normalize_clamp(clamp) -> float:
    """``None`` (or 0) means no clamping; negative values are rejected."""
    if clamp is None:
        return 0.0
    return check_scalar("clamp", clamp)


def check_lengths(name: str, lengths, batch: int, low: int, high: int, what: str) -> np.ndarray:
    check_array(name, lengths, kind="index", ndim=1, shape_doc="(B,)")
    check_dim(name, lengths, 0, batch, "batch size B")
    host = to_host(lengths).astype(np.int64)
    check_range(name, host, low, high, what)
    return host
