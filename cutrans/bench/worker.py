"""Run and measure ONE method in this process (``python -m cutrans.bench.worker SPEC.json``).

The parent (``runner``) starts one fresh interpreter per method so that peak-RSS deltas
are not polluted by other methods' allocator caches, libraries or JIT state. The spec is
JSON: ``{"workload": {...}, "seed", "dtype", "device", "method": {...}, "repeat",
"warmup", "progress": prefix-or-null}``. The result is printed as one JSON line prefixed
with ``RESULT_TAG`` on stdout.

Protocol per method: set-up (inputs, and for loss-only rows the padded logits) -> warm-up
calls (the last one under ``tracemalloc`` for NumPy-based cutrans rows) -> reset the peak
probes -> ``repeat`` timed forward+backward calls -> loss and gradient-norm summary.
"""
from __future__ import annotations

import gc
import json
import sys
import traceback

import numpy as np

from . import measure
from .methods import Method, joint_logits_numpy, valid_mask
from .workloads import Workload, make_inputs

RESULT_TAG = "CUTRANS-BENCH-RESULT "


def _np_dtype(dtype: str):
    from .._dtypes import DTYPES

    dt = DTYPES[dtype][0]
    if dt is None:
        raise RuntimeError("bfloat16 NumPy arrays need the ml_dtypes package")
    return dt


def _torch_dtype(dtype: str):
    import torch

    return getattr(torch, dtype)


def prepare(method: Method, x, dtype: str, device: str):
    """``(step, summarize, warm_step)``: ``step()`` runs forward+backward once and returns its
    outputs; ``summarize(out)`` -> ``(mean loss, L2 norm of the checked gradient)``;
    ``warm_step`` is what a warm-up call runs (``step`` except for warprnnt-numba)."""
    fam = method.family
    B = x.shape[0]
    mask = valid_mask(x)
    if fam in ("fused", "cutrans-logits"):
        import cutrans

        xp = np
        if device == "cuda":
            import cupy as xp
        cast = (lambda a: xp.asarray(a.astype(_np_dtype(dtype))))
        ints = [xp.asarray(a) for a in (x.targets, x.enc_lengths, x.target_lengths)]
        if fam == "fused":
            from .methods import fused_chunk

            args = [cast(a) for a in (x.enc, x.pred, x.weight, x.bias)] + ints
            _, budget = fused_chunk(_sizes(x), method, 8 if dtype == "float64" else 4)

            def step():
                o = cutrans.transducer_loss(*args, max_workspace_bytes=budget,
                                            sample_wise=method.sample_wise)
                return o.loss, o.grads.weight
        else:
            logits = joint_logits_numpy(x, xp, dtype).astype(_np_dtype(dtype), copy=False)

            def step():
                return cutrans.rnnt_loss(logits, *ints, return_grad=True)

        def summarize(out):
            loss, grad = (np.asarray(a.get() if hasattr(a, "get") else a) for a in out)
            g = grad.astype(np.float64)
            if fam == "cutrans-logits":
                g = g[mask]
            return float(loss), float(np.linalg.norm(g))
        return step, summarize, step

    import torch

    dev = torch.device("cuda" if device == "cuda" else "cpu")
    tdt = _torch_dtype(dtype)
    ints = [torch.from_numpy(a).to(dev) for a in (x.targets, x.enc_lengths, x.target_lengths)]
    if fam == "baseline":
        from .baseline import batched_loss

        params = [torch.from_numpy(a).to(dev, tdt).requires_grad_()
                  for a in (x.enc, x.pred, x.weight, x.bias)]

        def step():
            for p in params:
                p.grad = None
            loss = batched_loss(*params, *ints)
            loss.backward()
            return loss.detach(), params[2].grad
    else:
        if device == "cuda":  # compute on the GPU, hand over through DLPack
            import cupy

            lg = torch.from_dlpack(joint_logits_numpy(x, cupy, dtype))
        else:
            lg = torch.from_numpy(joint_logits_numpy(x, np, dtype))
        lg = (lg.to(tdt) if fam == "torchaudio" else lg).requires_grad_()  # warprnnt: fp32/64
        if fam == "torchaudio":
            import torchaudio.functional as taf

            def loss_fn():
                return taf.rnnt_loss(lg, *(a.int() for a in ints), blank=0, reduction="mean")
        else:
            from warprnnt_numba.rnnt_loss.rnnt_pytorch import rnnt_loss as warp_loss

            def loss_fn():
                return warp_loss(lg, *(a.int() for a in ints), blank=0, reduction="sum") / B

            # its only warm-up effect is Numba's JIT: compile on a tiny lattice instead of
            # paying a full-size call (seconds on CPU) before the timed ones
            tiny = [torch.zeros(1, 2, 2, lg.shape[-1], device=dev, requires_grad=True),
                    torch.ones(1, 1, dtype=torch.int32, device=dev),
                    torch.full((1,), 2, dtype=torch.int32, device=dev),
                    torch.ones(1, dtype=torch.int32, device=dev)]

            def warm_step():
                warp_loss(*tiny, blank=0, reduction="sum").backward()

        def step():
            lg.grad = None
            loss = loss_fn()
            loss.backward()
            return loss.detach(), lg.grad

    tmask = torch.from_numpy(mask).to(dev)

    def summarize(out):
        loss, grad = out
        g = grad.double()
        if fam != "baseline":
            g = g[tmask]
        return float(loss), float(torch.linalg.vector_norm(g))
    return step, summarize, (warm_step if fam == "warprnnt" else step)


def _sizes(x) -> dict:
    B, T, U, V, H = x.shape
    per = x.enc_lengths.astype(np.int64) * (x.target_lengths.astype(np.int64) + 1)
    return {"batch": B, "frames": T, "labels": U, "vocab": V, "hidden": H,
            "padded_rows": B * T * (U + 1), "packed_rows": int(per.sum()),
            "max_sample_rows": int(per.max())}


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
    x = make_inputs(Workload(**spec["workload"]), int(spec["seed"]))
    _progress(prefix, "set-up")
    (step, summarize, warm_step), t_setup = measure.cpu_timer(lambda: prepare(method, x, dtype, device))
    res = {"setup_s": t_setup, "tracemalloc_peak_bytes": None}
    numpy_based = method.family in ("fused", "cutrans-logits") and device == "cpu"
    warm = []
    for i in range(warmup):
        _progress(prefix, f"warm-up {i + 1}/{warmup}")
        trace = numpy_based and i == warmup - 1
        if trace:
            import tracemalloc

            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        out, dt = measure.cpu_timer(warm_step)
        warm.append(dt)
        if trace:
            res["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        out = None
    gc.collect()
    timer = measure.CudaTimer() if device == "cuda" else measure.cpu_timer
    probe = _MemoryProbe(device, method)
    times = []
    budget = spec.get("max_seconds")
    with probe:
        for i in range(repeat):
            _progress(prefix, f"run {i + 1}/{repeat}")
            out = None
            out, dt = timer(step)
            times.append(dt)
            if budget is not None and sum(times) >= budget:
                break
    loss, gnorm = summarize(out)
    res.update(probe.result(), times_s=times, warmup_s=warm, loss=loss, grad_norm=gnorm,
               status="ok")
    return res


class _MemoryProbe:
    """Peak bytes allocated during the timed calls, above what was live before them."""

    def __init__(self, device: str, method: Method):
        self.device, self.method = device, method
        self.cupy = device == "cuda" and method.family in ("fused", "cutrans-logits")

    def __enter__(self):
        if self.device == "cpu":
            self.base = measure.rss_bytes()
            self.how = "VmHWM after clear_refs" if measure.reset_peak_rss() else "ru_maxrss"
        elif self.cupy:
            self.hook = measure.cupy_peak_hook()
            self.hook.__enter__()
            self.how = "cupy memory pool (MemoryHook)"
        else:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.how = "torch.cuda.max_memory_allocated"
        return self

    def __exit__(self, *exc):
        if self.device == "cpu":
            self.peak = max(0, measure.peak_rss_bytes() - self.base)
        elif self.cupy:
            self.hook.__exit__(*exc)
            self.peak = self.hook.peak
        else:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        return False

    def result(self) -> dict:
        key = "peak_rss_delta_bytes" if self.device == "cpu" else "peak_alloc_bytes"
        return {"peak_bytes": int(self.peak), key: int(self.peak), "memory_probe": self.how}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        res = measure_method(spec)
    except MemoryError:
        res = {"status": "error", "message": "out of memory (MemoryError)"}
    except Exception as exc:  # reported in the table, not a crash of the whole bench
        res = {"status": "error", "message": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()}
    sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
