"""The compared methods: what each runs, whether it is installed, how much memory it needs.

Families (``--methods`` selects by these names):

* ``fused`` — ``cutrans.transducer_loss`` (joint + output layer + loss, forward and backward),
  one row per ``--budgets`` entry (a workspace size, or ``sample`` for ``sample_wise=True``
  with a budget of exactly one utterance: the seed paper's method).
* ``fused-tf32`` — one fused row (the first ``--budgets`` entry) with ``allow_tf32=True``;
  default on ``--device cuda --dtype float32`` only (NumPy has no TF32: on the CPU the row
  computes exactly what the float32 row computes).
* ``gemm-roof`` — the three GEMMs of the fused op alone on the packed rows, at the fused
  rows' precision (``steps.roof_precision``), H and V padded to multiples of 8 as the fused
  op pads V (16-byte rows for 16-bit types; no bias column), plus a TF32 roof when a ``fused-tf32`` row
  runs: the ``time/roof`` denominator.
* ``baseline`` — PyTorch full 4-D joint + log_softmax + RNN-T loss, autograd (``baseline``).
* ``baseline-autocast`` — the same with float32 parameters and the joint under
  ``torch.autocast(dtype)`` (``--dtype bfloat16/float16`` only; the logits are cast to
  float32 for the loss): the mixed-precision batched computation.
* ``cutrans-logits`` — ``cutrans.rnnt_loss(..., return_grad=True)`` on precomputed padded
  logits (loss only: the joint is not part of the timed call).
* ``torchaudio``, ``warprnnt`` — the same loss-on-logits with those libraries (if installed).

Estimates (bytes, before running) follow the allocations of each implementation and were
checked against the measured peaks (BENCHMARKS.md); they include set-up arrays (the logits
of the loss-only rows) because those must fit too.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from .._dtypes import DTYPES

FAMILIES = ("fused", "fused-tf32", "gemm-roof", "baseline", "baseline-autocast",
            "cutrans-logits", "torchaudio", "warprnnt")
CUTRANS_FAMILIES = ("fused", "cutrans-logits")  # rows whose disagreement fails the bench
HALF = ("float16", "bfloat16")
BATCHED = ("baseline", "baseline-autocast")
SLACK = 8 << 20  # interpreter-side temporaries, blocks of the NumPy backend


@dataclass(frozen=True)
class Method:
    """One table row. ``budget`` (bytes) for fused rows; None + ``sample_wise`` for sample;
    ``tf32``: fused and gemm-roof rows with TF32 GEMMs allowed (float32)."""

    family: str
    budget: int | None = None
    sample_wise: bool = False
    tf32: bool = False

    @property
    def key(self) -> str:
        tail = ":tf32" if self.tf32 else ""
        if self.family != "fused":
            return self.family + tail
        return ("fused:sample" if self.sample_wise else f"fused:{self.budget}") + tail

    @property
    def label(self) -> str:
        from .measure import fmt_bytes

        tail = ", tf32" if self.tf32 else ""
        if self.family == "fused":
            return ("cutrans fused (sample-wise" if self.sample_wise
                    else f"cutrans fused ({fmt_bytes(self.budget)}") + tail + ")"
        if self.family == "gemm-roof":
            return "3 GEMMs alone (roof" + tail + ")"
        return {"baseline": "torch batched (baseline)",
                "baseline-autocast": "torch batched, autocast",
                "cutrans-logits": "cutrans rnnt_loss (logits)",
                "torchaudio": "torchaudio rnnt_loss (logits)",
                "warprnnt": "warprnnt-numba (logits)"}[self.family]

    @property
    def kind(self) -> str:
        """``joint``: gradients w.r.t. enc, pred, W, b; ``logits``: loss-only rows;
        ``gemm``: the roof (timing only)."""
        if self.family == "gemm-roof":
            return "gemm"
        return "joint" if self.family in ("fused",) + BATCHED else "logits"

    def to_spec(self) -> dict:
        return {"family": self.family, "budget": self.budget, "sample_wise": self.sample_wise,
                "tf32": self.tf32}

    @classmethod
    def from_spec(cls, spec: dict) -> "Method":
        return cls(spec["family"], spec.get("budget"), bool(spec.get("sample_wise")),
                   bool(spec.get("tf32")))


def parse_budgets(items) -> list[int | str]:
    """``["64M", "8M", "sample"]`` -> ``[67108864, 8388608, "sample"]``."""
    from .measure import parse_positive_bytes

    out: list[int | str] = []
    for item in items:
        for tok in str(item).split(","):
            tok = tok.strip()
            if not tok:
                continue
            if tok.lower() in ("sample", "sample-wise", "samplewise"):
                out.append("sample")
                continue
            try:
                out.append(parse_positive_bytes(tok))
            except ValueError as exc:
                raise ValueError(f"--budgets: {exc}") from None
    return out


def default_families(device: str, dtype: str) -> list[str]:
    """``--methods`` default: everything that applies to this device and dtype."""
    skip = set()
    if not (device == "cuda" and dtype == "float32"):
        skip.add("fused-tf32")
    if dtype not in HALF:
        skip.add("baseline-autocast")
    return [f for f in FAMILIES if f not in skip]


def build_methods(budgets, families=FAMILIES, dtype: str = "float32") -> list[Method]:
    """Methods in table order: fused rows (one per budget; the tf32 row at the first budget),
    the GEMM roof(s), the batched baselines, loss-only rows."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; expected some of "
                         f"{', '.join(FAMILIES)}")
    if "fused-tf32" in families and dtype != "float32":
        raise ValueError(f"--methods fused-tf32: TF32 applies to float32 inputs, got --dtype "
                         f"{dtype}")
    if "baseline-autocast" in families and dtype not in HALF:
        raise ValueError(f"--methods baseline-autocast: needs --dtype bfloat16 or float16, got "
                         f"{dtype}")
    out = []
    if "fused" in families:
        for b in budgets:
            out.append(Method("fused", None, True) if b == "sample" else Method("fused", int(b)))
    if "fused-tf32" in families and budgets:
        b = budgets[0]
        out.append(Method("fused", None, True, True) if b == "sample"
                   else Method("fused", int(b), tf32=True))
    if "gemm-roof" in families:
        out.append(Method("gemm-roof"))
        if "fused-tf32" in families:
            out.append(Method("gemm-roof", tf32=True))
    out += [Method(f) for f in FAMILIES[3:] if f in families]
    return out


def missing_dependency(method: Method, device: str) -> str | None:
    """Why the method cannot run here (a missing package), or None."""
    need = {"baseline": ["torch"], "baseline-autocast": ["torch"],
            "torchaudio": ["torch", "torchaudio"],
            "warprnnt": ["torch", "warprnnt_numba"]}.get(method.family, [])
    if device == "cuda":
        need = need + ["cupy"]  # cutrans on CUDA, the roof, timers and device queries use CuPy
    for mod in need:
        if importlib.util.find_spec(mod) is None:
            return f"not installed: {mod}"
    return None


# ------------------------------------------------------------------ estimates
def fused_workspace_rule(sizes: dict, dtype: str) -> tuple[int, int]:
    """``(bytes per chunk row, fixed bytes)`` of the fused op's workspace, from its own rule
    (``cutrans._fused.workspace_bytes``: per-row h and z and the one-pass state; the (Vp, Hp)
    weight copy and dW accumulator, 16-bit inputs' per-sample accumulators)."""
    from types import SimpleNamespace

    from .._fused import workspace_bytes

    B, T, U, V, H = (sizes[k] for k in ("batch", "frames", "labels", "vocab", "hidden"))
    dt = np.float16 if DTYPES[dtype].itemsize == 2 else DTYPES[dtype].numpy  # (bf16: = fp16)
    enc, pred, weight = (SimpleNamespace(shape=sh, dtype=dt)
                         for sh in ((B, T, H), (B, U + 1, H), (V, H)))
    one = workspace_bytes(enc, pred, weight, 1)
    per_row = workspace_bytes(enc, pred, weight, 2) - one
    return per_row, one - per_row


def fused_chunk(sizes: dict, method: Method, dtype: str) -> tuple[int, int]:
    """``(rows of the largest chunk, max_workspace_bytes)`` of this method's fused call.
    Sample-wise: a budget of exactly the longest sample, so every chunk is one sample."""
    per_row, fixed = fused_workspace_rule(sizes, dtype)
    if method.sample_wise:
        rows = sizes["max_sample_rows"]
        return rows, fixed + rows * per_row
    rows = max(0, (method.budget - fixed) // per_row)
    return int(min(rows, sizes["packed_rows"])), int(method.budget)


def estimate_bytes(method: Method, sizes: dict, dtype: str, device: str = "cpu") -> dict:
    """Predicted bytes: ``call`` (peak of one forward+backward above what was live before),
    ``setup`` (inputs in all the copies the method keeps, and the padded logits of the
    loss-only rows) and ``total`` (what must fit).

    Coefficients were checked against peak-RSS deltas measured on CPU (BENCHMARKS.md):
    the baseline's peak is ~3 V-wide and ~3 H-wide tensors per padded lattice point,
    warprnnt-numba's 3-4 fp32 V-wide ones (4 assumed); torchaudio's (not installed here) is assumed ~2.
    The autocast baseline adds the half copies of h and the logits to the float32 baseline's
    (GPU-FINDINGS: 14.0 GiB vs 12.7 GiB on libri); the roof's row buffers are set-up.
    """
    s = DTYPES[dtype].itemsize
    c = 8 if dtype == "float64" else 4
    B, T, U, V, H = (sizes[k] for k in ("batch", "frames", "labels", "vocab", "hidden"))
    P, R = sizes["padded_rows"], sizes["packed_rows"]
    inputs = (B * T * H + B * (U + 1) * H + V * H + V) * (4 + s)  # fp32 master + cast
    if method.family == "gemm-roof":
        from .._fused import round8
        from .steps import roof_chunk_rows, roof_precision

        st = DTYPES[roof_precision(dtype, device, False)[0]].itemsize
        n = roof_chunk_rows(sizes, dtype, device)
        Hr, Vr = round8(H), round8(V)  # the roof's padded widths
        call, setup = SLACK, inputs + (n * (2 * Hr + Vr) + 2 * Vr * Hr) * st
    elif method.family == "fused":  # one pass: the workspace (<= the budget) + gradients
        n, budget = fused_chunk(sizes, method, dtype)
        per_row, fixed = fused_workspace_rule(sizes, dtype)
        work = min(budget, fixed + n * per_row)
        grads = (B * T * H + B * (U + 1) * H + V * H + V) * s
        call, setup = work + grads + 64 * B + SLACK, inputs  # + the plan: O(B)
    elif method.family == "baseline":
        call, setup = P * 3 * (V * c + H * s) + SLACK, inputs
    elif method.family == "baseline-autocast":  # float32 h plus its half copy, half logits
        call, setup = P * (3 * (V * 4 + H * 4) + (V + H) * s) + SLACK, inputs
    elif method.family == "cutrans-logits":
        call, setup = P * V * s + 4 * R * c + SLACK, inputs + P * V * (4 + s)
    else:
        wide = 8 if dtype == "float64" else 4
        k, ls = (4, wide) if method.family == "warprnnt" else (2, s)
        call, setup = k * P * V * ls + 16 * P + SLACK, inputs + P * V * (4 + ls)
    return {"call": int(call), "setup": int(setup), "total": int(call + setup)}


def fits(estimate: int, available: int, fraction: float = 0.85) -> bool:
    return estimate <= fraction * available


# ------------------------------------------------------------------ set-up helpers
def joint_logits_numpy(x, xp=np, dtype="float32"):
    """Padded ``(B, T, U+1, V)`` logits of the tanh joint, one utterance at a time, computed
    in float64 for ``dtype="float64"`` and float32 otherwise (NumPy or CuPy as ``xp``)."""
    B, T, U, V, H = x.shape
    cdt = np.float64 if dtype == "float64" else np.float32
    enc, pred, w, b = (xp.asarray(a, dtype=cdt) for a in (x.enc, x.pred, x.weight, x.bias))
    out = xp.empty((B, T, U + 1, V), dtype=cdt)
    for i in range(B):  # one 2-D GEMM per utterance (stacked 3-D matmul is ~6x slower)
        h = xp.tanh(enc[i][:, None, :] + pred[i][None, :, :]).reshape(T * (U + 1), H)
        out[i] = (h @ w.T + b).reshape(T, U + 1, V)
    del h
    return out


def valid_mask(x) -> np.ndarray:
    """(B, T, U+1) bool: the lattice points inside each utterance."""
    B, T, U, _, _ = x.shape
    t = np.arange(T)[None, :, None] < x.enc_lengths[:, None, None]
    u = np.arange(U + 1)[None, None, :] <= x.target_lengths[:, None, None]
    return t & u
