"""A second stream for the lattices of the pipelined one pass (``cutrans._fused.one_pass``).

A group's lattice is latency-bound: a block per (sample, sweep) on a few SMs while the rest
of the GPU idles (H100, BENCHMARKS.md runs C/D: ~0.33 ms per group, 1.6 ms of a 14.4 ms
bf16 call). The pipelined one pass runs each group's lattice on a side stream while the
main stream computes the next group's logits and the previous group's gradients (two
workspace sets). Only lattice kernels run on the side stream: no cuBLAS call (one handle's
workspace must not serve two streams at once), and they allocate nothing but, on a
variant's first call, its cached arc table (``_plan.device_ints``); the arrays they use were
allocated on the main stream, which waits for the side stream before the call returns.

Protocol (``launch``/``wait``, two slots: a group's parity)::

    side.launch(slot, fn)  # the side stream waits for the main stream's work so far,
                           # runs fn, and marks its end in the slot's event
    side.wait(slot)        # the main stream waits for that mark

An event is recorded again (two groups later) only after the main stream's wait for its
previous mark was enqueued, so two events per direction suffice.
"""
from __future__ import annotations

import threading


class InlineSide:
    """The CPU backends' side stream: ``fn`` runs at once, in the pipeline's order (the same
    results, the order exercised without a GPU)."""

    def launch(self, slot: int, fn) -> None:
        fn()

    def wait(self, slot: int) -> None:
        pass


class CupySide:
    """A non-blocking CuPy stream on the current device, with two events each way."""

    def __init__(self, cupy):
        self._cuda = cupy.cuda
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._main_done = [cupy.cuda.Event(disable_timing=True) for _ in range(2)]
        self._side_done = [cupy.cuda.Event(disable_timing=True) for _ in range(2)]

    def launch(self, slot: int, fn) -> None:
        main = self._cuda.get_current_stream()
        self._main_done[slot].record(main)
        self.stream.wait_event(self._main_done[slot])
        with self.stream:  # the current stream while fn enqueues; the main one after
            fn()
        self._side_done[slot].record(self.stream)

    def wait(self, slot: int) -> None:
        self._cuda.get_current_stream().wait_event(self._side_done[slot])


_LOCAL = threading.local()  # a thread's side streams by device id


def cupy_side():
    """This thread's side stream on the current device, made on first use; None while the
    current stream captures a CUDA graph (the pipeline then stays on one stream: a stream
    created or forked there is not what the capture tests measured)."""
    import cupy

    if cupy.cuda.runtime.streamIsCapturing(cupy.cuda.get_current_stream().ptr):
        return None
    sides = getattr(_LOCAL, "sides", None)
    if sides is None:
        sides = _LOCAL.sides = {}
    dev = cupy.cuda.Device().id
    if dev not in sides:
        sides[dev] = CupySide(cupy)
    return sides[dev]
