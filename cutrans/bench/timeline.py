"""Where one profiled call leaves the GPU idle (``scripts/gpu_profile.py``).

From the call's span on the host and its GPU activities (kernels, copies, memsets; times
in microseconds on the profiler's clock, which aligns host and GPU events), ``idle_report``
gives the time before the first activity (host work the first kernel waits for), the idle
gaps between activities (the host falling behind the GPU, or a synchronisation), the time
after the last one, and the largest gaps with the activities around them. The profiler's
own per-launch overhead makes the host slower than in an unprofiled call, so these are
upper bounds on the host time a plain call exposes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Activity:
    """One GPU activity: a name and its [start, end) in microseconds."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class Gap:
    """An idle interval of the GPU inside the call, between two activities."""

    us: float
    after: str  # the activity that ended before it
    before: str  # the activity that starts after it


@dataclass(frozen=True)
class IdleReport:
    """Microseconds: the call's span, GPU-busy time (the union of the activities inside the
    span), idle time before the first activity, between activities, after the last one; the
    largest gaps between activities, largest first."""

    span: float
    busy: float
    before: float
    between: float
    after: float
    gaps: tuple[Gap, ...]


def idle_report(span: tuple[float, float], activities: list[Activity],
                top: int = 5) -> IdleReport:
    """The GPU's idle time inside ``span`` = (start, end) given its ``activities`` (any
    order; overlapping ones, e.g. on two streams, count once; parts outside the span are
    cut off; empty ones ignored); ``top``: how many of the largest gaps to keep."""
    lo, hi = span
    if hi < lo:
        raise ValueError(f"span: end {hi} before start {lo}")
    inside = sorted((max(a.start, lo), min(a.end, hi), a.name) for a in activities
                    if a.end > lo and a.start < hi and a.end > a.start)
    if not inside:
        return IdleReport(hi - lo, 0.0, hi - lo, 0.0, 0.0, ())
    busy, gaps = 0.0, []
    cur_start, cur_end, cur_name = inside[0]
    for start, end, name in inside[1:]:
        if start > cur_end:  # an idle gap: close the busy interval
            busy += cur_end - cur_start
            gaps.append(Gap(start - cur_end, cur_name, name))
            cur_start, cur_end, cur_name = start, end, name
        elif end > cur_end:
            cur_end, cur_name = end, name
    busy += cur_end - cur_start
    gaps.sort(key=lambda g: -g.us)
    return IdleReport(hi - lo, busy, inside[0][0] - lo, sum(g.us for g in gaps),
                      hi - cur_end, tuple(gaps[:top]))


def _is_gpu_event(event) -> bool:
    return str(getattr(event, "device_type", "")).endswith("CUDA")


def is_gpu_activity(event) -> bool:
    """A GPU event of ``torch.profiler`` that is work (a kernel, copy, memset): not the
    GPU-side copy of a ``record_function`` range (``is_user_annotation``), which spans
    everything launched inside it."""
    return _is_gpu_event(event) and not getattr(event, "is_user_annotation", False)


def from_profiler_events(events, span_name: str) -> tuple[tuple[float, float], list[Activity]]:
    """(span, activities) from ``torch.profiler``'s ``prof.events()``: the span of the
    host event named ``span_name`` (a ``record_function`` around the call) and every GPU
    activity (``is_gpu_activity``; its ``time_range``). ValueError if the span is not among
    the events."""
    span = None
    acts = []
    for e in events:
        r = e.time_range
        if is_gpu_activity(e):
            acts.append(Activity(e.name, float(r.start), float(r.end)))
        elif e.name == span_name and span is None and not _is_gpu_event(e):
            span = (float(r.start), float(r.end))
    if span is None:
        raise ValueError(f"span_name: no host event named {span_name!r} in the profile")
    return span, acts


def format_report(r: IdleReport, short_name=lambda s: s) -> str:
    """Two lines for the profile's printout (milliseconds)."""
    gaps = ", ".join(f"{g.us / 1e3:.3f} after {short_name(g.after)} before "
                     f"{short_name(g.before)}" for g in r.gaps)
    return (f"  GPU idle in the profiled call (host span {r.span / 1e3:.2f} ms, GPU busy "
            f"{r.busy / 1e3:.2f} ms): {r.before / 1e3:.3f} ms before the first activity, "
            f"{r.between / 1e3:.3f} ms between activities, {r.after / 1e3:.3f} ms after the last"
            f"\n    largest gaps (ms): {gaps or 'none'}")
