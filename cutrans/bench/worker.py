"""Run and measure ONE method in this process (``python -m cutrans.bench.worker SPEC.json``).

The parent (``runner``) starts one fresh interpreter per method so that peak-RSS deltas
are not polluted by other methods' allocator caches, libraries or JIT state. The spec is
JSON: ``{"workload": {...}, "seed", "dtype", "device", "method": {...}, "repeat",
"warmup", "max_seconds", "progress": prefix-or-null, "check": {"path", "samples",
"max_elements"} or null, "accuracy_only": bool}``. The result is printed as one JSON line
prefixed with ``RESULT_TAG`` on stdout.

Protocol per method: import its libraries (the CPU total-peak baseline is the RSS here) ->
set-up (inputs, and for loss-only rows the padded logits) -> warm-up calls (the last one
under ``tracemalloc`` for NumPy-based cutrans rows) -> reset the peak probes -> ``repeat``
timed forward+backward calls -> loss and gradient-norm summary -> the accuracy check: the
same method on the check slice, errors against the runner's float64 reference (``check``).
``accuracy_only`` skips everything but the check (a baseline that did not fit at full size).
"""
from __future__ import annotations

import functools
import gc
import json
import sys
import traceback

import numpy as np

from . import accuracy, measure, steps
from .methods import BATCHED, Method
from .workloads import Workload, make_inputs

RESULT_TAG = "CUTRANS-BENCH-RESULT "


def _progress(prefix, text):
    """``\r``-updated status line on a terminal; one line per method otherwise (logs)."""
    if prefix is None:
        return
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{prefix} {text}\033[K")
    elif text == "set-up":
        sys.stderr.write(f"{prefix} ...\n")
    sys.stderr.flush()


def measure_method(spec: dict) -> dict:
    """Set up, warm up, time and measure one method; the result dict (see module doc)."""
    method = Method.from_spec(spec["method"])
    device, dtype = spec["device"], spec["dtype"]
    repeat, warmup = int(spec["repeat"]), int(spec["warmup"])
    prefix = spec.get("progress")
    check = spec.get("check")
    steps.import_libraries(method, device)
    rss0 = measure.rss_bytes()
    x = accuracy.round_inputs(make_inputs(Workload(**spec["workload"]), int(spec["seed"])), dtype)
    xs = None
    if check and method.kind != "gemm":
        xs = accuracy.check_slice(x, check["samples"], check["max_elements"])
    res = {"status": "ok"}
    held = [x]  # _timed drops the master inputs once the method has its own copies
    del x
    if not spec.get("accuracy_only"):
        res.update(_timed(method, held, dtype, device, repeat, warmup, prefix,
                          spec.get("max_seconds"), rss0))
    held.clear()
    if xs is not None:
        _progress(prefix, "accuracy check")
        res["accuracy"] = check_accuracy(method, xs, dtype, device, check["path"])
    return res


def _timed(method, held, dtype, device, repeat, warmup, prefix, budget, rss0) -> dict:
    _progress(prefix, "set-up")
    x = held.pop()
    prep, t_setup = measure.cpu_timer(functools.partial(steps.prepare, method, x, dtype, device))
    del x  # the method's own copies stay; the master inputs go (CPU total peak)
    res = {"setup_s": t_setup, "tracemalloc_peak_bytes": None, "precision": prep.precision}
    numpy_based = method.family in ("fused", "cutrans-logits") and device == "cpu"
    warm = []
    for i in range(warmup):
        _progress(prefix, f"warm-up {i + 1}/{warmup}")
        trace = numpy_based and i == warmup - 1
        if trace:
            import tracemalloc

            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        out, dt = measure.cpu_timer(prep.warm_step)
        warm.append(dt)
        if trace:
            res["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        out = None
    gc.collect()
    timer = measure.CudaTimer() if device == "cuda" else measure.cpu_timer
    probe = _MemoryProbe(device, rss0)
    times = []
    with probe:
        for i in range(repeat):
            _progress(prefix, f"run {i + 1}/{repeat}")
            out = None
            out, dt = timer(prep.step)
            times.append(dt)
            if budget is not None and sum(times) >= budget:
                break
    loss, gnorm = prep.summarize(out)
    res.update(probe.result(), times_s=times, warmup_s=warm, loss=loss, grad_norm=gnorm)
    return res


def check_accuracy(method: Method, xs, dtype: str, device: str, path: str) -> dict:
    """The method on the check slice ``xs``: its errors against the reference in ``path``."""
    with np.load(path) as ref:
        ref = dict(ref)
    logits = ref["logits_in"] if method.kind == "logits" else None
    prep = steps.prepare(method, xs, dtype, device, logits=logits,
                         logits_grad=method.family in BATCHED)
    got = prep.fetch(prep.step())
    return accuracy.errors(got, ref, method.kind)


class _MemoryProbe:
    """Peak bytes during the timed calls: above what was live before them (``peak``), and in
    all (``total``: inputs, outputs, workspaces).

    CPU: ``VmHWM`` reset after warm-up; total = peak RSS - the RSS after the method's
    libraries were imported, before its inputs were made. CUDA: CuPy pool bytes in use
    (a MemoryHook for the peak) plus, when the method uses PyTorch CUDA, torch's allocated
    bytes (``max_memory_allocated`` after ``reset_peak_memory_stats``); the CUDA context and
    cuBLAS workspaces are not counted.
    """

    def __init__(self, device: str, rss0: int):
        self.device, self.rss0 = device, rss0

    def __enter__(self):
        if self.device == "cpu":
            self.base = measure.rss_bytes()
            self.how = "VmHWM after clear_refs" if measure.reset_peak_rss() else "ru_maxrss"
            return self
        import cupy

        cupy.cuda.Device().synchronize()
        self.cupy_used0 = cupy.get_default_memory_pool().used_bytes()
        self.hook = measure.cupy_peak_hook()
        self.hook.__enter__()
        self.how = "cupy memory pool (MemoryHook)"
        self.torch = _torch_cuda()
        if self.torch is not None:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.torch0 = self.torch.cuda.memory_allocated()
            self.how += " + torch.cuda.max_memory_allocated"
        return self

    def __exit__(self, *exc):
        if self.device == "cpu":
            peak = measure.peak_rss_bytes()
            self.peak, self.total = max(0, peak - self.base), max(0, peak - self.rss0)
            return False
        self.hook.__exit__(*exc)
        self.peak = self.hook.peak
        self.total = self.cupy_used0 + self.hook.peak
        if self.torch is not None:
            self.torch.cuda.synchronize()
            top = self.torch.cuda.max_memory_allocated()
            self.peak += top - self.torch0
            self.total += top
        return False

    def result(self) -> dict:
        key = "peak_rss_delta_bytes" if self.device == "cpu" else "peak_alloc_bytes"
        return {"peak_bytes": int(self.peak), key: int(self.peak),
                "total_peak_bytes": int(self.total), "memory_probe": self.how}


def _torch_cuda():
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch


def run_spec(spec: dict) -> dict:
    """``measure_method`` with failures as results: ``unavailable`` (a third-party library
    that cannot run here) or ``error`` (with the message and traceback)."""
    fam = spec["method"]["family"]
    try:
        return measure_method(spec)
    except steps.Unavailable as exc:
        return {"status": "unavailable", "message": str(exc)}
    except MemoryError:
        return {"status": "error", "message": "out of memory (MemoryError)"}
    except Exception as exc:  # reported in the table, not a crash of the whole bench
        if fam in ("torchaudio", "warprnnt") and "row_stack" in str(exc):
            dist = "warprnnt-numba" if fam == "warprnnt" else "torchaudio"
            return {"status": "unavailable", "message": steps.third_party_failure(dist, exc)}
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    res = run_spec(spec)
    sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
