"""Hypothesis strategies: random valid cases of both operations (host NumPy arrays).

Shapes are drawn by hypothesis (so they shrink); values come from a NumPy generator seeded
by a drawn integer. Lengths are ragged, with zero-label and single-frame samples, padded
sizes larger than every length, garbage in the padding (NaN for logits, wild values for
targets: only the valid part may be read), blank ids in [-V, V).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from cutrans._dtypes import DTYPES

#: storage dtypes available here (bfloat16 needs ml_dtypes)
DTYPE_NAMES = [n for n in ("float64", "float32", "float16", "bfloat16") if DTYPES[n][0] is not None]


def np_dtype(name):
    return DTYPES[name][0]


@dataclass
class Lattice:
    B: int
    t_len: np.ndarray
    u_len: np.ndarray
    T: int  # padded sizes
    U: int
    V: int
    blank: int  # as passed to the API: in [-V, V)
    rng: np.random.Generator = field(repr=False)
    index_dtype: str = "int64"

    @property
    def blank_id(self) -> int:
        return self.blank % self.V

    @property
    def rows(self) -> int:
        return int((self.t_len * (self.u_len + 1)).sum())

    def targets(self):
        """(B, U) labels != blank in the valid part; any value after it (padding: never
        read, even out of [0, V), e.g. -100)."""
        labels = np.array([k for k in range(self.V) if k != self.blank_id])
        y = self.rng.choice(labels, size=(self.B, self.U)) if self.U else np.zeros((self.B, 0))
        garbage = self.rng.integers(-128, self.V + 128, size=(self.B, self.U))
        pad = np.arange(self.U)[None, :] >= self.u_len[:, None]
        return np.where(pad, garbage, y).astype(self.index_dtype)

    def lengths(self):
        return self.t_len.astype(self.index_dtype), self.u_len.astype(self.index_dtype)


@st.composite
def lattices(draw, max_B=4, max_T=6, max_U=4, min_V=2, max_V=8):
    B = draw(st.integers(1, max_B))
    t_len = np.array(draw(st.lists(st.integers(1, max_T), min_size=B, max_size=B)))
    u_len = np.array(draw(st.lists(st.integers(0, max_U), min_size=B, max_size=B)))
    V = draw(st.integers(min_V, max_V))
    return Lattice(
        B=B, t_len=t_len, u_len=u_len, T=int(t_len.max()) + draw(st.integers(0, 2)),
        U=int(u_len.max()) + draw(st.integers(0, 2)), V=V, blank=draw(st.integers(-V, V - 1)),
        rng=np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        index_dtype=draw(st.sampled_from(["int32", "int64"])))


SCALARS = dict(
    fastemit=st.one_of(st.just(0.0), st.sampled_from([1e-3, 0.1, 1.0]), st.floats(0, 2)),
    clamp=st.one_of(st.none(), st.just(0.0), st.sampled_from([1e-3, 0.05, 0.5]),
                    st.floats(1e-3, 2)),
)


@dataclass
class LogitsCase:
    lat: Lattice
    dtype: str
    layout: str
    logits: np.ndarray  # padded (B, T, U+1, V) or packed (rows, V), storage dtype
    padded: np.ndarray  # float64 padded copy of the stored values (reference input)
    targets: np.ndarray
    fastemit: float
    clamp: float | None
    masked: int | None  # a label masked with -inf everywhere (never a target, never blank)


@st.composite
def logits_cases(draw, dtypes=None, **lattice_kw):
    lat = draw(lattices(**lattice_kw))
    dtype = draw(st.sampled_from(dtypes or DTYPE_NAMES))
    layout = draw(st.sampled_from(["padded", "packed"]))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0, 10.0]))
    rng = lat.rng
    targets = lat.targets()
    z = np.full((lat.B, lat.T, lat.U + 1, lat.V), np.nan)  # padding: never read
    for b in range(lat.B):
        T, U = lat.t_len[b], lat.u_len[b]
        z[b, :T, :U + 1] = rng.standard_normal((T, U + 1, lat.V)) * scale
    used = {lat.blank_id} | {int(targets[b, u]) for b in range(lat.B) for u in range(lat.u_len[b])}
    free = [k for k in range(lat.V) if k not in used]
    masked = draw(st.one_of(st.none(), st.sampled_from(free))) if free else None
    if masked is not None:
        z[..., masked] = -np.inf
    stored = z.astype(np_dtype(dtype))
    padded = stored.astype(np.float64)
    if layout == "packed":
        logits = np.concatenate([stored[b, :lat.t_len[b], :lat.u_len[b] + 1].reshape(-1, lat.V)
                                 for b in range(lat.B)])
    else:
        logits = stored
    return LogitsCase(lat, dtype, layout, logits, padded, targets, draw(SCALARS["fastemit"]),
                      draw(SCALARS["clamp"]), masked)


def pack(padded, lat: Lattice):
    """(B, T, U+1, ...) -> the packed rows (sum_b T_b (U_b + 1), ...)."""
    return np.concatenate([padded[b, :lat.t_len[b], :lat.u_len[b] + 1].reshape(
        -1, *padded.shape[3:]) for b in range(lat.B)])


@dataclass
class FusedCase:
    lat: Lattice
    dtype: str
    H: int
    activation: str
    inputs: tuple  # enc, pred, weight, bias (storage dtype)
    targets: np.ndarray
    fastemit: float
    clamp: float | None
    rows_per_chunk: int  # workspace budget in rows (1 .. all rows)
    sample_wise: bool

    def budget(self) -> int:
        """max_workspace_bytes for ``rows_per_chunk`` rows per chunk (1: the smallest)."""
        from cutrans._fused import workspace_bytes
        return workspace_bytes(*self.inputs[:3], self.rows_per_chunk)


@st.composite
def fused_cases(draw, dtypes=None, max_H=8, **lattice_kw):
    lat = draw(lattices(**lattice_kw))
    dtype = draw(st.sampled_from(dtypes or DTYPE_NAMES))
    H = draw(st.integers(1, max_H))
    rng = lat.rng
    scale = draw(st.sampled_from([0.3, 1.0, 2.0]))
    enc = rng.standard_normal((lat.B, lat.T, H)) * scale
    pred = rng.standard_normal((lat.B, lat.U + 1, H)) * scale
    weight = rng.standard_normal((lat.V, H)) / np.sqrt(H) * draw(st.sampled_from([0.5, 1.0, 3.0]))
    bias = rng.standard_normal(lat.V) * 0.3
    dt = np_dtype(dtype)
    everything = draw(st.booleans())
    n = lat.rows if everything else draw(st.integers(1, lat.rows))
    return FusedCase(lat, dtype, H, draw(st.sampled_from(["tanh", "relu", "identity"])),
                     tuple(x.astype(dt) for x in (enc, pred, weight, bias)), lat.targets(),
                     draw(SCALARS["fastemit"]), draw(SCALARS["clamp"]), n,
                     draw(st.booleans()))
