"""The accuracy check: every method's error against a float64 reference on a fixed slice.

Agreement is judged on a **check slice** of the workload, not on the full-size run: the
first ``--check-samples`` utterances (default 4), their lengths scaled down together
(``T_b``, ``U_b`` times the same factor) only if the slice would hold more than
``--check-size`` lattice-row x vocabulary elements (default 8M). Every method runs the
slice in its own worker after its timed calls and reports its errors against a float64
reference computed once per run by the runner (``reference``):

* joint rows (fused, batched baselines): the cutrans **NumPy backend in float64** on the
  slice's inputs (already rounded to the run's dtype, so every method sees the same
  numbers): loss, d_enc, d_pred, dW, db; plus dL/dlogits of the float64 joint for the
  batched rows' logits gradient (the tests check this reference against the float64
  PyTorch autograd batched computation to 1e-9).
* loss-only rows (logits): the slice's padded logits as those rows receive them (the joint
  in float32, float64 for float64 runs, rounded to the dtype) and the float64 loss and
  dL/dlogits **on those logits** (the same computation).

Errors: ``|loss - ref| / |ref|`` for the mean loss of the slice and ``max|g - ref| /
max|ref|`` per gradient (dlogits on the lattice points only); NaN/inf give ``inf``.

Rule (``judge``): a method fails only if one of its errors exceeds
``max(K * baseline error, floor)`` for that quantity, where the baseline error is the
largest error among the batched-baseline rows of the run (``baseline``,
``baseline-autocast``; run on the slice alone when they did not run at full size), capped
at ``CAP_FACTOR * floor`` so a broken baseline cannot loosen the rule without bound. The
floors depend on the dtype and on the slice's mean loss ``L`` (``floors``): the gradients
of an alpha/beta lattice computed with unit roundoff ``u`` carry relative errors ~``u L``.
K and the floors come from the measurements recorded in BENCHMARKS.md ("Agreement rule").
"""
from __future__ import annotations

import math

import numpy as np

from .methods import joint_logits_numpy, valid_mask
from .workloads import Inputs

#: how many times the baselines' error a method may have
K = 4.0
#: unit roundoff of each dtype; the lattice computes in float32 for float16/bfloat16 inputs
UNIT = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "bfloat16": 2.0 ** -9,
        "float16": 2.0 ** -11}
COMPUTE = {"float64": "float64", "float32": "float32", "bfloat16": "float32",
           "float16": "float32"}
#: gradient floor: C_LATTICE u_compute L + A_STORAGE u_storage (half dtypes), where L is the
#: slice's mean -log P(y|x) per sample: alpha/beta of size ~L carry absolute rounding errors
#: ~u L, which become relative errors of the gradients (measured: <= 12.2 u L, see
#: BENCHMARKS.md "Agreement rule"); half gradients are also rounded to their storage
C_LATTICE, A_STORAGE = 32.0, 4.0
#: loss floor (relative error of the slice's mean loss), per dtype
LOSS_FLOOR = {"float64": 16 * 2.0 ** -53, "float32": 16 * 2.0 ** -24, "bfloat16": 6e-5,
              "float16": 1.6e-5}
#: TF32 rows (float32 inputs, GEMM inputs rounded to a 10-bit mantissa): floors raised to
#: TF32's unit roundoff 2^-11 (measured with the NumPy backend's TF32 emulation, H 4-256,
#: V 6-256: loss <= 2.9e-5 relative, gradients <= 7.0e-4 = 1.4 u_tf32)
UNIT_TF32 = 2.0 ** -11
LOSS_FLOOR_TF32 = 0.25 * UNIT_TF32
#: the baselines' error used by the rule is capped at CAP_FACTOR x the floor (a broken
#: baseline cannot loosen the rule without bound)
CAP_FACTOR = 8.0
JOINT_GRADS = ("enc", "pred", "weight", "bias")
QUANTITIES = ("loss",) + JOINT_GRADS + ("logits",)
DEFAULT_SAMPLES = 4
DEFAULT_SIZE = 8 << 20  # lattice rows x V of the slice


def np_dtype(dtype: str):
    """NumPy dtype for a benchmark dtype name (bfloat16 through ml_dtypes)."""
    from .._dtypes import DTYPES

    dt = DTYPES[dtype][0]
    if dt is None:
        raise RuntimeError("bfloat16 NumPy arrays need the ml_dtypes package")
    return dt


def round_inputs(x: Inputs, dtype: str) -> Inputs:
    """The float32 master inputs rounded to ``dtype`` (kept in float32; exact for half types),
    so a float32-parameter method (autocast) sees the numbers a half-input method gets."""
    if dtype not in ("float16", "bfloat16"):
        return x
    dt = np_dtype(dtype)
    r = [a.astype(dt).astype(np.float32) for a in (x.enc, x.pred, x.weight, x.bias)]
    return Inputs(*r, x.targets, x.enc_lengths, x.target_lengths)


def check_slice(x: Inputs, samples: int = DEFAULT_SAMPLES,
                max_elements: int = DEFAULT_SIZE) -> Inputs | None:
    """The first ``samples`` utterances, lengths scaled down so that rows * V fits
    ``max_elements``; None when ``samples`` is 0 (check disabled)."""
    if samples <= 0:
        return None
    n = min(int(samples), x.shape[0])
    V = x.shape[3]
    t = x.enc_lengths[:n].astype(np.int64)
    u = x.target_lengths[:n].astype(np.int64)
    t2, u2 = t, u
    s = math.sqrt(max_elements / max(1, int((t * (u + 1)).sum()) * V))
    while int((t2 * (u2 + 1)).sum()) * V > max_elements and (t2.max() > 1 or u2.max() > 0):
        t2 = np.maximum(1, np.floor(t * s)).astype(np.int64)
        u2 = np.floor(u * s).astype(np.int64)
        s *= 0.9
    T, U = int(t2.max()), int(u2.max())
    return Inputs(x.enc[:n, :T].copy(), x.pred[:n, :U + 1].copy(),
                  x.weight, x.bias, x.targets[:n, :U].copy(),
                  t2.astype(np.int32), u2.astype(np.int32))


def slice_info(xs: Inputs, x: Inputs) -> dict:
    """JSON description of a check slice (``x``: the full inputs it was cut from)."""
    n = xs.shape[0]
    t, u = xs.enc_lengths.astype(np.int64), xs.target_lengths.astype(np.int64)
    scaled = bool((t != x.enc_lengths[:n]).any() or (u != x.target_lengths[:n]).any())
    return {"samples": n, "rows": int((t * (u + 1)).sum()), "frames": int(t.max()),
            "labels": int(u.max()), "lengths_scaled": scaled, "enc_lengths": t.tolist(),
            "target_lengths": u.tolist()}


def logits_input(xs: Inputs, dtype: str) -> np.ndarray:
    """Padded logits the loss-only rows get on the slice: the joint in float32 (float64 for
    float64 runs), rounded to ``dtype``, held in float32 (float64) so they save exactly."""
    lg = joint_logits_numpy(xs, np, dtype)
    return lg.astype(np_dtype(dtype)).astype(lg.dtype) if dtype != lg.dtype.name else lg


def reference(xs: Inputs, dtype: str) -> dict:
    """Float64 references on the slice (see the module docstring); NumPy arrays."""
    import cutrans

    ints = (xs.targets, xs.enc_lengths, xs.target_lengths)
    f64 = [a.astype(np.float64) for a in (xs.enc, xs.pred, xs.weight, xs.bias)]
    o = cutrans.transducer_loss(*f64, *ints, backend="numpy")
    ref = {"loss": np.float64(o.loss)}
    ref.update(zip(JOINT_GRADS, o.grads))
    mask = valid_mask(xs)
    _, g = cutrans.rnnt_loss(joint_logits_numpy(xs, np, "float64"), *ints, return_grad=True,
                             backend="numpy")
    ref["logits"] = g[mask]
    del g
    lin = logits_input(xs, dtype)
    loss, g = cutrans.rnnt_loss(lin.astype(np.float64), *ints, return_grad=True,
                                backend="numpy")
    ref.update(logits_in=lin, given_loss=np.float64(loss), given_logits=g[mask])
    return ref


def _max_rel(got: np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"accuracy check: shape {got.shape}, reference {want.shape}")
    if not np.isfinite(got).all():
        return math.inf
    scale = float(np.abs(want).max()) if want.size else 0.0
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def errors(got: dict, ref, kind: str) -> dict:
    """Errors of one method's slice outputs (``got``: host arrays by quantity name)."""
    loss_ref = float(ref["given_loss"] if kind == "logits" else ref["loss"])
    loss = float(np.asarray(got["loss"], dtype=np.float64).reshape(-1)[0])  # (1,) from warprnnt
    out = {"loss": abs(loss - loss_ref) / max(abs(loss_ref), 1e-300)
           if math.isfinite(loss) else math.inf}
    names = ("logits",) if kind == "logits" else JOINT_GRADS + ("logits",)
    for q in names:
        if got.get(q) is None:
            continue
        want = ref["given_logits" if kind == "logits" else q]
        out[q] = _max_rel(got[q], want)
    return out


def baseline_errors(rows) -> dict:
    """Per quantity, the largest error among the batched-baseline results in ``rows``."""
    base: dict = {}
    for err in rows:
        for q, e in err.items():
            base[q] = max(base.get(q, 0.0), e)
    return base


def floors(dtype: str, loss: float, tf32: bool = False) -> tuple[float, float]:
    """``(loss floor, gradient floor)`` for ``dtype`` on a slice whose mean per-sample loss
    (``-log P(y|x)``) is ``loss``; ``tf32``: a row whose float32 GEMMs may use TF32."""
    u_c = UNIT[COMPUTE[dtype]]
    u_s = UNIT[dtype] if dtype in ("float16", "bfloat16") else (UNIT_TF32 if tf32 else 0.0)
    loss_floor = max(LOSS_FLOOR[dtype], LOSS_FLOOR_TF32) if tf32 else LOSS_FLOOR[dtype]
    return loss_floor, C_LATTICE * u_c * max(1.0, abs(loss)) + A_STORAGE * u_s


def judge(err: dict, base: dict, dtype: str, loss: float, tf32: bool = False) -> dict:
    """``{"agrees", "allowed", "vs_baseline"}`` for one method's errors (see module doc);
    ``loss``: the slice's mean per-sample reference loss (sets the floors); ``tf32``: the
    row's GEMMs may use TF32 (TF32 floors)."""
    fl = floors(dtype, loss, tf32)
    allowed, ratio = {}, {}
    for q, e in err.items():
        floor = fl[0] if q == "loss" else fl[1]
        b = base.get(q)
        allowed[q] = max(floor, K * min(b, CAP_FACTOR * floor)) if b is not None else floor
        ratio[q] = (e / b if b > 0 else (1.0 if e == 0 else math.inf)) if b is not None \
            else None
    return {"agrees": all(err[q] <= allowed[q] for q in err), "allowed": allowed,
            "vs_baseline": ratio}
