"""The compared methods: what each runs, whether it is installed, how much memory it needs.

Families (``--methods`` selects by these names):

* ``fused`` — ``cutrans.transducer_loss`` (joint + output layer + loss, forward and backward),
  one row per ``--budgets`` entry (a workspace size, or ``sample`` for ``sample_wise=True``
  with a budget of exactly one utterance: the seed paper's method).
* ``baseline`` — PyTorch full 4-D joint + log_softmax + RNN-T loss, autograd (``baseline``).
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

FAMILIES = ("fused", "baseline", "cutrans-logits", "torchaudio", "warprnnt")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SLACK = 8 << 20  # interpreter-side temporaries, blocks of the NumPy backend


@dataclass(frozen=True)
class Method:
    """One table row. ``budget`` (bytes) for fused rows; None + ``sample_wise`` for sample."""

    family: str
    budget: int | None = None
    sample_wise: bool = False

    @property
    def key(self) -> str:
        if self.family != "fused":
            return self.family
        return "fused:sample" if self.sample_wise else f"fused:{self.budget}"

    @property
    def label(self) -> str:
        from .measure import fmt_bytes

        if self.family == "fused":
            return ("cutrans fused (sample-wise)" if self.sample_wise
                    else f"cutrans fused ({fmt_bytes(self.budget)})")
        return {"baseline": "torch batched (baseline)",
                "cutrans-logits": "cutrans rnnt_loss (logits)",
                "torchaudio": "torchaudio rnnt_loss (logits)",
                "warprnnt": "warprnnt-numba (logits)"}[self.family]

    @property
    def kind(self) -> str:
        """``joint``: gradients w.r.t. enc, pred, W, b; ``logits``: loss-only rows."""
        return "joint" if self.family in ("fused", "baseline") else "logits"

    def to_spec(self) -> dict:
        return {"family": self.family, "budget": self.budget, "sample_wise": self.sample_wise}

    @classmethod
    def from_spec(cls, spec: dict) -> "Method":
        return cls(spec["family"], spec.get("budget"), bool(spec.get("sample_wise")))


def parse_budgets(items) -> list[int | str]:
    """``["64M", "8M", "sample"]`` -> ``[67108864, 8388608, "sample"]``."""
    from .measure import parse_bytes

    out: list[int | str] = []
    for item in items:
        for tok in str(item).split(","):
            tok = tok.strip()
            if not tok:
                continue
            out.append("sample" if tok.lower() in ("sample", "sample-wise", "samplewise")
                       else parse_bytes(tok))
    return out


def build_methods(budgets, families=FAMILIES) -> list[Method]:
    """Methods in table order: fused rows (one per budget), baseline, loss-only rows."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; expected some of "
                         f"{', '.join(FAMILIES)}")
    out = []
    if "fused" in families:
        for b in budgets:
            out.append(Method("fused", None, True) if b == "sample" else Method("fused", int(b)))
    out += [Method(f) for f in FAMILIES[1:] if f in families]
    return out


def missing_dependency(method: Method, device: str) -> str | None:
    """Why the method cannot run here (a missing package), or None."""
    need = {"baseline": ["torch"], "torchaudio": ["torch", "torchaudio"],
            "warprnnt": ["torch", "warprnnt_numba"]}.get(method.family, [])
    if device == "cuda" and method.family in ("fused", "cutrans-logits"):
        need = ["cupy"]
    if device == "cuda" and method.family != "fused" and method.family != "cutrans-logits":
        need = need + ["cupy"]  # timers and device queries use CuPy
    for mod in need:
        if importlib.util.find_spec(mod) is None:
            return f"not installed: {mod}"
    return None


# ------------------------------------------------------------------ estimates
def fused_chunk(sizes: dict, method: Method, compute_bytes: int) -> tuple[int, int]:
    """``(rows per chunk, budget)`` the fused op will use for this method."""
    H, V, R = sizes["hidden"], sizes["vocab"], sizes["packed_rows"]
    per_row, fixed = (2 * H + V) * compute_bytes, V * H * compute_bytes
    if method.sample_wise:
        rows = sizes["max_sample_rows"]
        return rows, fixed + rows * per_row
    rows = max(0, (method.budget - fixed) // per_row)
    return int(min(rows, R)), int(method.budget)


def estimate_bytes(method: Method, sizes: dict, dtype: str) -> dict:
    """Predicted bytes: ``call`` (peak of one forward+backward above what was live before),
    ``setup`` (inputs in all the copies the method keeps, and the padded logits of the
    loss-only rows) and ``total`` (what must fit).

    Coefficients were checked against peak-RSS deltas measured on CPU (BENCHMARKS.md):
    the baseline's peak is ~3 V-wide and ~3 H-wide tensors per padded lattice point,
    warprnnt-numba's 3-4 fp32 V-wide ones (4 assumed); torchaudio's (not installed here) is assumed ~2.
    """
    s = DTYPE_BYTES[dtype]
    c = 8 if dtype == "float64" else 4
    B, T, U, V, H = (sizes[k] for k in ("batch", "frames", "labels", "vocab", "hidden"))
    P, R = sizes["padded_rows"], sizes["packed_rows"]
    inputs = (B * T * H + B * (U + 1) * H + V * H + V) * (4 + s)  # fp32 master + cast
    if method.family == "fused":
        n, _ = fused_chunk(sizes, method, c)
        work = n * (2 * H + V) * c + V * H * c + n * 48  # h, dh, z, dW buffer, row indices
        grads = (B * T * H + B * (U + 1) * H + V * H + V) * c
        # per lattice row: lp_blank, lp_emit, alpha, beta + the backend's int64 indices
        call, setup = work + R * (4 * c + 40) + grads + SLACK, inputs
    elif method.family == "baseline":
        call, setup = P * 3 * (V * c + H * s) + SLACK, inputs
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
    for i in range(B):
        h = xp.tanh(enc[i][:, None, :] + pred[i][None, :, :])
        out[i] = h @ w.T + b
    del h
    return out


def valid_mask(x) -> np.ndarray:
    """(B, T, U+1) bool: the lattice points inside each utterance."""
    B, T, U, _, _ = x.shape
    t = np.arange(T)[None, :, None] < x.enc_lengths[:, None, None]
    u = np.arange(U + 1)[None, None, :] <= x.target_lengths[:, None, None]
    return t & u
