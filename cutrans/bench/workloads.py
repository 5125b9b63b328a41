"""Benchmark workloads: shapes, per-utterance lengths (drawn once, fixed seed) and inputs.

A workload is the padded shape ``(B, T, U, V, H)`` plus per-sample frame counts ``T_b`` and
label counts ``U_b``. The padded batch always contains one utterance of the full length
``(T, U)``, so the padded tensors of the batched baseline really have shape
``(B, T, U+1, V)``.

Length models:

* ``"full"``: every utterance has ``(T, U)`` (the seed paper's worst case).
* ``"uniform"``: ``T_b ~ U[T/2, T]``, ``U_b ~ round(T_b * U / T * U[0.8, 1])``.
* ``"librispeech-100"``: utterance durations drawn from the quantile table
  ``LIBRISPEECH_100_DURATION_QUANTILES`` below (piecewise-linear inverse CDF), at 40 ms per
  frame (10 ms features, 4x subsampling); ``U_b = round(T_b * r)``, ``r ~ U[0.25, 0.30]``
  BPE-500 tokens per frame (about 7 tokens/s).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

#: Approximate duration quantiles (seconds) of LibriSpeech train-clean-100 (28,539 utterances,
#: 100.6 h, mean 12.7 s, min ~1.4 s, max ~24.5 s; most segments are 10-16.5 s long). An embedded
#: approximation consistent with those published totals, not a measurement made here: the
#: interpolated table has mean 12.74 s. (quantile, seconds) pairs.
LIBRISPEECH_100_DURATION_QUANTILES = (
    (0.00, 1.4), (0.05, 4.5), (0.10, 6.5), (0.25, 11.3), (0.50, 14.0),
    (0.75, 15.3), (0.90, 15.9), (0.95, 16.2), (1.00, 24.5),
)
FRAME_SECONDS = 0.04  # 10 ms features, 4x subsampling
LENGTH_MODELS = ("full", "uniform", "librispeech-100")


@dataclass(frozen=True)
class Workload:
    """A named benchmark shape. ``batch``/``frames``/``labels`` are the padded maxima."""

    name: str
    batch: int
    frames: int
    labels: int
    vocab: int
    hidden: int
    lengths: str = "uniform"
    description: str = ""
    repeat: int = 3  # default timed repetitions
    warmup: int = 1  # default warm-up runs
    length_scale: float = 1.0  # multiplies drawn lengths of the librispeech-100 model

    def scaled(self, *, batch: int | None = None, length_scale: float | None = None):
        """A copy with another batch size, or frames and labels scaled by ``length_scale``."""
        w = self
        if batch is not None:
            w = replace(w, batch=int(batch))
        if length_scale is not None:
            w = replace(w, frames=max(1, round(w.frames * length_scale)),
                        labels=max(1, round(w.labels * length_scale)),
                        length_scale=w.length_scale * length_scale)
        return w

    def to_dict(self) -> dict:
        return asdict(self)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("cpu-small", 16, 150, 40, 256, 256, "uniform",
             "default: < 1 min on 2 CPU cores; the batched baseline needs ~10x the memory"),
    Workload("cpu-large-memory", 32, 400, 100, 2048, 256, "uniform",
             "batched form needs > 40 GB (does not fit a 24 GB machine); fused < 1 GB",
             repeat=1, warmup=0),
    Workload("librispeech-100", 30, 612, 184, 500, 512, "librispeech-100",
             "B=30 utterances with LibriSpeech train-clean-100 lengths, BPE-500"),
    Workload("large-vocab", 8, 800, 400, 4096, 512, "uniform",
             "large vocabulary, long label sequences", repeat=2),
    Workload("paper-headline", 1024, 1000, 200, 1024, 512, "full",
             "Braun et al. 2022 headline: ~840 GB of fp32 logits when batched (GPU-sized)",
             repeat=1, warmup=1),
)}
DEFAULT_WORKLOAD = "cpu-small"


def custom_workload(batch, frames, labels, vocab, hidden, base: Workload | None = None):
    """A workload from explicit sizes; unspecified ones come from ``base`` (cpu-small)."""
    base = base or WORKLOADS[DEFAULT_WORKLOAD]
    fields = {"batch": batch, "frames": frames, "labels": labels, "vocab": vocab,
              "hidden": hidden}
    w = replace(base, **{k: int(x) for k, x in fields.items() if x is not None})
    name = "custom" if any(x is not None for x in fields.values()) else base.name
    own_lengths = frames is not None or labels is not None
    lengths = "uniform" if own_lengths and w.lengths == "librispeech-100" else w.lengths
    return replace(w, name=name, lengths=lengths,
                   description=base.description if name == base.name else "custom shape")


def _interp_quantiles(q: np.ndarray, table) -> np.ndarray:
    qs, vals = zip(*table)
    return np.interp(q, qs, vals)


def draw_lengths(w: Workload, seed: int):
    """Per-sample ``(T_b, U_b)`` int64 arrays and the padded ``(T, U)`` they imply."""
    rng = np.random.default_rng(seed)
    B = w.batch
    if w.lengths == "full":
        t = np.full(B, w.frames, np.int64)
        u = np.full(B, w.labels, np.int64)
    elif w.lengths == "uniform":
        t = rng.integers(max(1, w.frames // 2), w.frames + 1, size=B)
        u = np.rint(t * (w.labels / w.frames) * rng.uniform(0.8, 1.0, size=B)).astype(np.int64)
        t[0], u[0] = w.frames, w.labels  # the padded shape is attained
    elif w.lengths == "librispeech-100":
        sec = _interp_quantiles(rng.uniform(0.0, 1.0, size=B), LIBRISPEECH_100_DURATION_QUANTILES)
        t = np.maximum(1, np.rint(sec * w.length_scale / FRAME_SECONDS)).astype(np.int64)
        u = np.rint(t * rng.uniform(0.25, 0.30, size=B)).astype(np.int64)
    else:
        raise ValueError(f"lengths: expected one of {LENGTH_MODELS}, got {w.lengths!r}")
    u = np.clip(u, 1, None) if w.lengths != "full" else u
    if w.lengths == "uniform":
        u = np.minimum(u, w.labels)
    return t.astype(np.int64), u.astype(np.int64), int(t.max()), int(u.max())


@dataclass
class Inputs:
    """Float32 master inputs (cast per method to the benchmark dtype) and int targets."""

    enc: np.ndarray  # (B, T, H)
    pred: np.ndarray  # (B, U+1, H)
    weight: np.ndarray  # (V, H)
    bias: np.ndarray  # (V,)
    targets: np.ndarray  # (B, U) int32, labels in 1..V-1 (blank = 0)
    enc_lengths: np.ndarray  # (B,) int32
    target_lengths: np.ndarray  # (B,) int32

    @property
    def shape(self):
        B, T, H = self.enc.shape
        return B, T, self.targets.shape[1], self.weight.shape[0], H


def make_inputs(w: Workload, seed: int = 0) -> Inputs:
    """Deterministic inputs for a workload (same numbers in every process for one seed)."""
    t_len, u_len, T, U = draw_lengths(w, seed)
    rng = np.random.default_rng(seed + 1)
    B, V, H = w.batch, w.vocab, w.hidden
    # scales keep tanh out of saturation and the logits O(1): realistic softmax entropies
    enc = rng.standard_normal((B, T, H), dtype=np.float32) * np.float32(0.5)
    pred = rng.standard_normal((B, U + 1, H), dtype=np.float32) * np.float32(0.5)
    weight = rng.standard_normal((V, H), dtype=np.float32) * np.float32(1.0 / np.sqrt(H))
    bias = rng.standard_normal(V, dtype=np.float32) * np.float32(0.1)
    targets = rng.integers(1, V, size=(B, U), dtype=np.int32) if V > 1 else \
        np.zeros((B, U), np.int32)
    return Inputs(enc, pred, weight, bias, targets, t_len.astype(np.int32),
                  u_len.astype(np.int32))


def lattice_sizes(w: Workload, seed: int = 0) -> dict:
    """Padded rows ``B*T*(U+1)``, packed rows ``sum T_b (U_b+1)``, largest sample, lengths."""
    t, u, T, U = draw_lengths(w, seed)
    per = t * (u + 1)
    return {"batch": w.batch, "frames": T, "labels": U, "vocab": w.vocab, "hidden": w.hidden,
            "padded_rows": int(w.batch * T * (U + 1)), "packed_rows": int(per.sum()),
            "max_sample_rows": int(per.max()), "enc_lengths": t.tolist(),
            "target_lengths": u.tolist()}
