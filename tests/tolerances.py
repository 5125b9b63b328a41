"""Tolerances against float64 runs, per table, dtype and quantity, sized from measured error.

Metric (``scaled_error``): ``max|got - ref| / max|ref|`` over one quantity (a loss vector, one
gradient), where ``ref`` is a float64 computation on the same *stored* input values (the
low-precision inputs converted to float64). ``assert_close(got, ref, table, dtype, quantity)``
passes when that error is <= ``TABLES[table][dtype][quantity]``. Every entry is < 1, so an
all-zero result (error exactly 1) always fails; ``assert_close`` also rejects an all-zero
reference (nothing to compare).

Each entry is the measured maximum error (the comment next to it: the tests' fixed-seed
cases on the NumPy backend and the adapters, or the fuzz cases; this repository's CPU)
times a margin of 8, rounded up to one significant digit, and never below the floor of
the precision the quantity is computed in, ``tolerance_floor(table, dtype, quantity)``
(results differ in the last bits between BLAS builds and summation orders; the float64
floor is ~4,500 ulps): ``FLOOR[dtype]``, but ``FLOOR["float32"]`` for the logits op's loss
of 16-bit inputs (``FLOAT32_QUANTITIES``: float32 compute on the stored values, no 16-bit
rounding on the way).

Re-measure after a change of the precision policy (one command; it runs the tests that use
these tables with ``CUTRANS_TOL_REPORT`` set, which records instead of asserting, and prints
measured error, suggested and current tolerance per entry)::

    python scripts/agreement.py --tolerances

Measured at commit 08e47c6 (the logits op's 16-bit ``loss`` entries of ``LOGITS`` and
``FUZZ`` re-measured at fe3d61f, ``FUZZ`` with the ``long`` profile, and sized against the
float32 floor); the float16/bfloat16 entries of the fused op (``FUSED``, and
``FUZZ``'s enc, pred, weight, bias and fused_loss) re-measured at 6bb6c15, after the
precision policy that stores the joint activations h and logits z in the input dtype
(cutrans/_fused.py). Those errors are the policy's, not a bug: the fused loss equals a
float64 evaluation of the same rounded h and z to ~2e-7 (float32 round-off), and every
fused gradient's error equals that of torch's batched computation in the input dtype
(autocast's joint and output layer in 16 bits) on the same cases (ratio 1.00 at the
median, the same maxima).
"""
from __future__ import annotations

import atexit
import json
import os

import numpy as np

MARGIN = 8
FLOOR = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-4, "bfloat16": 1e-3}
#: (table, quantity) computed in float32 from 16-bit inputs without a 16-bit rounding
FLOAT32_QUANTITIES = {("logits", "loss"), ("fuzz", "loss")}

#: logits op (``rnnt_loss`` and its adapters) vs a float64 run / oracle: loss and grad(logits)
LOGITS = {
    "float64": {"loss": 1e-12,           # measured 2.6e-16
                "grad": 1e-12},          # measured 6.4e-15
    "float32": {"loss": 1e-6,            # measured 9.5e-08
                "grad": 6e-6},           # measured 7.2e-07
    "float16": {"loss": 1e-6,            # measured 1.2e-08 (float32 compute on stored values)
                "loss_rounded": 2e-3,    # measured 1.8e-04 (torch: loss in the input dtype)
                "grad": 5e-3},           # measured 5.5e-04 (one float16 rounding of the output)
    "bfloat16": {"loss": 1e-6,           # measured 6.0e-08 (float32 compute on stored values)
                 "loss_rounded": 9e-3,   # measured 1.1e-03
                 "grad": 3e-2},          # measured 2.9e-03 (one bfloat16 rounding)
}

#: fused op (``transducer_loss`` and its adapters) vs a float64 run / the torch oracle
FUSED = {
    "float64": {"loss": 1e-12,    # measured 2.1e-16
                "enc": 1e-12,     # measured 2.6e-15
                "pred": 1e-12,    # measured 2.4e-15
                "weight": 1e-12,  # measured 2.2e-15
                "bias": 1e-12},   # measured 1.2e-15
    "float32": {"loss": 1e-6,     # measured 9.0e-08
                "enc": 7e-6,      # measured 8.0e-07
                "pred": 2e-5,     # measured 1.3e-06
                "weight": 2e-5,   # measured 1.4e-06
                "bias": 3e-6},    # measured 3.4e-07
    # 16 bits: the stored h and z (precision policy, module doc); fixed-seed cases, measured
    # with ``python scripts/agreement.py --tolerances --fuzz-profile ci`` at 6bb6c15
    "float16": {"loss": 5e-4,     # measured 5.3e-05 (6.8e-08 before 16-bit h, z)
                "enc": 5e-3,      # measured 5.4e-04
                "pred": 5e-3,     # measured 6.1e-04
                "weight": 5e-3,   # measured 5.5e-04
                "bias": 4e-3},    # measured 4.0e-04
    "bfloat16": {"loss": 6e-3,    # measured 7.1e-04 (1.0e-07 before)
                 "enc": 4e-2,     # measured 3.8e-03
                 "pred": 4e-2,    # measured 4.4e-03
                 "weight": 3e-2,  # measured 3.5e-03
                 "bias": 3e-2},   # measured 3.4e-03
}

#: logits op vs warprnnt-numba run in the same dtype (float32: two float32 implementations)
WARPRNNT = {
    "float64": {"loss": 1e-12,   # measured 1.4e-16
                "grad": 1e-12},  # measured 6.7e-15
    "float32": {"loss": 1e-6,    # measured 1.2e-07
                "grad": 3e-5},   # measured 3.7e-06
}

#: property-based tests (tests/fuzz) vs tests/np_reference.py on random cases, measured with
#: the ``long`` profile (33,500 cases). The scale of each comparison is at least the
#: magnitude of the terms it sums (np_reference.term_magnitudes): errors of a float
#: computation follow those, not the possibly tiny result. ``loss``/``grad``: the logits op;
#: ``fused_loss``, ``enc``, ``pred``, ``weight``, ``bias``: the fused op (its loss has its own
#: entry: for 16-bit inputs it is computed from logits stored in 16 bits, the logits op's from
#: the given logits in float32).
#:
#: The fused entries are the maximum over five ``long`` runs (seeds 1-5, 117,500 value
#: cases; NumPy and emulated backends) and the ``ci`` run, at 6bb6c15::
#:
#:     for s in 1 2 3 4 5; do CUTRANS_FUZZ_SEED=$s \
#:         python scripts/agreement.py --tolerances tests/fuzz/test_fuzz_values.py; done
#:     python scripts/agreement.py --tolerances --fuzz-profile ci
FUZZ = {
    "float64": {"loss": 1e-12,        # measured 4.3e-16
                "fused_loss": 1e-12,  # measured 4.8e-16
                "grad": 1e-12,        # measured 8.0e-16
                "enc": 1e-12,         # measured 1.5e-16
                "pred": 1e-12,        # measured 1.7e-16
                "weight": 1e-12,      # measured 2.0e-16
                "bias": 1e-12},       # measured 1.6e-16
    "float32": {"loss": 3e-6,         # measured 2.7e-07
                "fused_loss": 2e-6,   # measured 2.4e-07
                "grad": 2e-6,         # measured 2.1e-07
                "enc": 1e-6,          # measured 7.0e-08
                "pred": 1e-6,         # measured 6.1e-08
                "weight": 2e-6,       # measured 1.5e-07
                "bias": 2e-6},        # measured 1.4e-07
    "float16": {"loss": 2e-6,         # measured 1.9e-07 (float32 compute on stored values)
                "fused_loss": 6e-3,   # measured 6.8e-04 (16-bit h and z; <= 1.9e-07 before)
                "grad": 9e-4,         # measured 1.0e-04
                "enc": 2e-3,          # measured 2.4e-04 (6.3e-05 before h, z in 16 bits)
                "pred": 2e-3,         # measured 2.4e-04 (7.3e-05 before)
                "weight": 4e-3,       # measured 3.8e-04 (1.0e-04 before)
                "bias": 2e-3},        # measured 2.0e-04 (7.9e-05 before)
    "bfloat16": {"loss": 2e-6,        # measured 2.0e-07 (float32 compute on stored values)
                 "fused_loss": 5e-2,  # measured 6.0e-03 (16-bit h and z; <= 1.6e-07 before)
                 "grad": 7e-3,        # measured 7.9e-04
                 "enc": 2e-2,         # measured 1.7e-03 (5.7e-04 before h, z in 16 bits)
                 "pred": 2e-2,        # measured 1.7e-03 (5.7e-04 before)
                 "weight": 2e-2,      # measured 2.1e-03 (4.8e-04 before)
                 "bias": 2e-2},       # measured 1.5e-03 (8.6e-04 before)
}

TABLES = {"logits": LOGITS, "fused": FUSED, "warprnnt": WARPRNNT, "fuzz": FUZZ}


def tolerance_floor(table: str, dtype: str, quantity: str) -> float:
    """The smallest tolerance of an entry: the floor of the precision it is computed in."""
    if dtype in ("float16", "bfloat16") and (table, quantity) in FLOAT32_QUANTITIES:
        return FLOOR["float32"]
    return FLOOR[dtype]


def _check_tables():
    for name, table in TABLES.items():
        for dtype, entries in table.items():
            for q, tol in entries.items():
                assert 0 < tol < 1, (name, dtype, q, tol)  # an all-zero result must fail
                assert tol >= tolerance_floor(name, dtype, q), (name, dtype, q, tol)
    for name, q in FLOAT32_QUANTITIES:  # a misspelt entry would keep its 16-bit floor
        assert all(q in TABLES[name][d] for d in ("float16", "bfloat16")), (name, q)


_check_tables()


def as_float64(x):
    """A NumPy float64 copy of a NumPy/CuPy/JAX array or a torch tensor."""
    get = getattr(x, "get", None)
    if callable(get) and not isinstance(x, np.ndarray):
        x = get()
    detach = getattr(x, "detach", None)  # torch tensors
    if callable(detach):
        x = detach().cpu().double().numpy()
    return np.asarray(x).astype(np.float64)


def scaled_error(got, ref, floor: float = 0.0) -> tuple[float, float]:
    """(max|got - ref| / scale, scale) over the entries where ref is finite, with
    ``scale = max(max|ref|, floor)``."""
    g, r = as_float64(got), as_float64(ref)
    assert g.shape == r.shape, (g.shape, r.shape)
    fin = np.isfinite(r)
    assert np.array_equal(np.isfinite(g), fin), "non-finite entries differ"
    if not fin.any():
        return 0.0, 0.0
    scale = max(float(np.abs(r[fin]).max()), floor)
    diff = float(np.abs(g[fin] - r[fin]).max())
    return (diff / scale if scale > 0 else diff), scale


_REPORT: dict = {}
_REPORT_PATH = os.environ.get("CUTRANS_TOL_REPORT")


def _write_report():
    old = {}
    if os.path.exists(_REPORT_PATH):
        with open(_REPORT_PATH) as f:
            old = json.load(f)
    for k, v in _REPORT.items():
        old[k] = max(old.get(k, 0.0), v)
    with open(_REPORT_PATH, "w") as f:
        json.dump(old, f, indent=1, sort_keys=True)


if _REPORT_PATH:
    atexit.register(_write_report)


def tolerance(table: str, dtype: str, quantity: str) -> float:
    return TABLES[table][dtype][quantity]


def assert_close(got, ref, table: str, dtype: str, quantity: str, what: str = "",
                 floor: float = 0.0):
    """``scaled_error(got, ref, floor) <= TABLES[table][dtype][quantity]`` (module doc).

    ``floor``: the smallest scale (e.g. 1 for losses, whose error does not shrink with the
    loss); a tiny floor accepts an all-zero reference, which then needs an all-zero result.
    With ``CUTRANS_TOL_REPORT=path`` the error is recorded (max per entry, JSON at exit)
    and not asserted: that is the measurement mode of ``scripts/agreement.py --tolerances``.
    """
    err, scale = scaled_error(got, ref, floor)
    if _REPORT_PATH:
        key = f"{table}/{dtype}/{quantity}"
        _REPORT[key] = max(_REPORT.get(key, 0.0), err)
        return
    tol = tolerance(table, dtype, quantity)
    assert scale > 0, f"{what or quantity}: the reference is all zero, nothing to compare"
    assert err <= tol, (f"{what or quantity} ({table}, {dtype}): max|got - ref| / max|ref| = "
                        f"{err:.3g} > tolerance {tol:g} (max|ref| = {scale:.3g})")
