"""Workloads: drawn lengths, determinism, the memory claims of the named shapes."""
import numpy as np
import pytest

from cutrans.bench.methods import Method, estimate_bytes
from cutrans.bench.workloads import (LIBRISPEECH_100_DURATION_QUANTILES, WORKLOADS, draw_lengths,
                                     lattice_sizes, make_inputs)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_lengths_in_range_and_padded_shape_attained(name):
    w = WORKLOADS[name]
    t, u, T, U = draw_lengths(w, 0)
    assert t.shape == u.shape == (w.batch,)
    assert t.min() >= 1 and u.min() >= 0 and T == t.max() and U == u.max()
    if w.lengths != "librispeech-100":
        assert (T, U) == (w.frames, w.labels)


def test_librispeech_lengths_look_like_train_clean_100():
    qs, secs = zip(*LIBRISPEECH_100_DURATION_QUANTILES)
    mean = sum((q1 - q0) * (s0 + s1) / 2 for q0, q1, s0, s1 in zip(qs, qs[1:], secs, secs[1:]))
    assert abs(mean - 12.7) < 0.1  # 100.6 h / 28,539 utterances
    w = WORKLOADS["librispeech-100"].scaled(batch=4000)
    t, u, _, _ = draw_lengths(w, 1)
    assert 300 < t.mean() < 335 and 35 <= t.min() and t.max() <= 613
    assert 0.24 < (u / t).min() and (u / t).max() < 0.31


def test_inputs_are_deterministic_and_valid():
    w = WORKLOADS["cpu-small"].scaled(batch=3)
    a, b = make_inputs(w, 5), make_inputs(w, 5)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in vars(a))
    assert a.enc.dtype == np.float32 and a.targets.min() >= 1 and a.targets.max() < w.vocab
    assert not np.array_equal(make_inputs(w, 6).enc, a.enc)


def test_named_workload_memory_claims():
    # cpu-small: the batched baseline needs several times the memory of the fused rows
    s = lattice_sizes(WORKLOADS["cpu-small"])
    base = estimate_bytes(Method("baseline"), s, "float32")["call"]
    assert base > 5 * estimate_bytes(Method("fused", 64 << 20), s, "float32")["call"]
    # cpu-large-memory: > 20 GB batched, < 1 GB extra for every fused row
    s = lattice_sizes(WORKLOADS["cpu-large-memory"])
    assert estimate_bytes(Method("baseline"), s, "float32")["total"] > 20e9
    assert estimate_bytes(Method("cutrans-logits"), s, "float32")["total"] > 20e9
    for m in (Method("fused", 64 << 20), Method("fused", 8 << 20), Method("fused", None, True)):
        assert estimate_bytes(m, s, "float32")["call"] < 1e9
    # the seed paper's headline: ~840 GB of fp32 logits alone
    s = lattice_sizes(WORKLOADS["paper-headline"])
    assert s["padded_rows"] * 1024 * 4 > 800e9
