"""cutrans.bench.timeline: the GPU's idle time inside a profiled call, against a brute-force
count over integer microseconds."""
from types import SimpleNamespace

import numpy as np
import pytest

from cutrans.bench.timeline import Activity, format_report, from_profiler_events, idle_report


def _brute(span, acts):
    """(busy, before, between, after, gaps) by marking every microsecond [t, t+1) busy."""
    lo, hi = span
    busy = np.zeros(hi - lo, bool)
    for a in acts:
        busy[max(a.start, lo) - lo:max(min(a.end, hi) - lo, 0)] = True
    idx = np.flatnonzero(busy)
    if idx.size == 0:
        return 0, hi - lo, 0, 0, []
    first, last = idx[0], idx[-1] + 1
    inner = ~busy[first:last]
    # lengths of the runs of idle microseconds between the first and last busy one
    edges = np.diff(np.concatenate([[0], inner.astype(int), [0]]))
    runs = sorted((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist(),
                  reverse=True)
    return int(busy.sum()), int(first), int(inner.sum()), int(hi - lo - last), runs


@pytest.mark.parametrize("seed", range(40))
def test_idle_report_matches_a_microsecond_count(seed):
    rng = np.random.default_rng(seed)
    span = (int(rng.integers(0, 50)), int(rng.integers(300, 400)))
    acts = []
    for k in range(int(rng.integers(0, 12))):  # some outside the span, some overlapping
        start = int(rng.integers(-20, 420))
        acts.append(Activity(f"k{k}", start, start + int(rng.integers(1, 60))))
    r = idle_report(span, acts, top=100)
    busy, before, between, after, runs = _brute(span, acts)
    assert (r.span, r.busy, r.before, r.between, r.after) == (span[1] - span[0], busy, before,
                                                              between, after)
    assert r.busy + r.before + r.between + r.after == r.span
    assert [g.us for g in r.gaps] == runs


def test_gaps_name_their_neighbours_and_overlaps_count_once():
    acts = [Activity("gemm", 10, 40), Activity("side", 20, 30),  # nested: no gap
            Activity("lattice", 50, 60), Activity("row_grad", 58, 90),  # overlapping
            Activity("joint", 100, 105)]
    r = idle_report((0, 120), acts, top=1)
    assert (r.before, r.busy, r.between, r.after) == (10, 30 + 40 + 5, 10 + 10, 15)
    assert len(r.gaps) == 1 and (r.gaps[0].after, r.gaps[0].before) in (
        ("gemm", "lattice"), ("row_grad", "joint"))
    r = idle_report((0, 120), acts)
    assert {(g.after, g.before) for g in r.gaps} == {("gemm", "lattice"), ("row_grad", "joint")}
    assert idle_report((5, 8), []).before == 3
    # an empty activity does not split a gap
    r = idle_report((0, 50), [Activity("a", 0, 10), Activity("empty", 20, 20),
                              Activity("b", 30, 50)])
    assert [(g.us, g.after, g.before) for g in r.gaps] == [(20, "a", "b")]
    with pytest.raises(ValueError, match="span"):
        idle_report((10, 5), acts)


def _event(name, start, end, device, annotation=False):
    return SimpleNamespace(name=name, device_type=f"DeviceType.{device}",
                           time_range=SimpleNamespace(start=start, end=end),
                           is_user_annotation=annotation)


def test_from_profiler_events_takes_the_span_and_the_gpu_events():
    # on a GPU, the record_function range also appears as a GPU event spanning its work
    events = [_event("call", 18, 42, "CUDA", annotation=True), _event("aten::empty", 1, 2, "CPU"),
              _event("call", 5, 100, "CPU"),
              _event("row_stats<float>", 20, 30, "CUDA"), _event("Memcpy DtoH", 40, 41, "CUDA")]
    span, acts = from_profiler_events(events, "call")
    assert span == (5.0, 100.0)
    assert acts == [Activity("row_stats<float>", 20.0, 30.0), Activity("Memcpy DtoH", 40.0, 41.0)]
    with pytest.raises(ValueError, match="span_name"):
        from_profiler_events(events, "missing")
    text = format_report(idle_report(span, acts), lambda s: s.split("<")[0])
    assert "0.015 ms before the first activity" in text and "after row_stats before Memcpy" in text


def test_the_torch_profiler_gives_a_span():
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("the call"):
            torch.ones(3).sum()
    (lo, hi), acts = from_profiler_events(prof.events(), "the call")
    assert hi > lo and acts == []  # no GPU here: all of the span is "before"
    assert idle_report((lo, hi), acts).before == hi - lo
