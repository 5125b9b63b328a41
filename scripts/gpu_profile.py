"""GPU time per kernel of one fused call (torch.profiler lists CuPy's kernels), for the ledger.

    python scripts/gpu_profile.py [--dtype float32|bfloat16] [--budget 512M] [--sample-wise]
                                  [--checks host|device] [--lengths cpu|cuda]
                                  [--workload NAME] [--batch B] [--gemms]

Runs ``cutrans.transducer_loss`` (reduction "sum", the one-pass path) on a bench workload
(default ``librispeech-100``; ``--batch``: the workload with B samples, lengths drawn for
B, e.g. 64 of ``paper-headline``'s all-full-length samples; the bench's inputs,
``bench.workloads.make_inputs``, as torch CUDA tensors), warms up, then prints the median
wall time of 5 calls (host clock around the call and a synchronize) and, from one profiled
call, the GPU time and launches of every kernel class (cuBLAS GEMMs under one class;
``--gemms``: also each GEMM kernel by name) and their sum; wall - GPU is host time (each
call starts on an idle GPU, so the host work before its first kernel shows). The profiled
call's timeline then says where the GPU was idle (``cutrans.bench.timeline``): before the
first kernel, between kernels (the largest gaps with their neighbours), after the last.
``--lengths``: where the lengths live (default: cuda for ``--checks host``, cpu for
``--checks device``, which needs them there); ``--checks device`` reads nothing back, so
host vs device checks at the same ``--lengths`` is what the host checks' reads cost.
"""
from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict

import cupy
import torch
from torch.profiler import ProfilerActivity, profile

import cutrans
from cutrans.bench import timeline
from cutrans.bench.measure import parse_bytes
from cutrans.bench.workloads import WORKLOADS, make_inputs


GEMM = "cuBLAS GEMM"
SPAN = "cutrans.transducer_loss (profiled call)"


def _class(name: str) -> str:
    if re.search(r"gemm|sm90_|cutlass|xmma|ampere_|cublas", name, re.I):
        return GEMM
    return re.sub(r"<.*", "", name)  # template arguments off


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--budget", default="512M")
    ap.add_argument("--sample-wise", action="store_true")
    ap.add_argument("--checks", default="host", choices=["host", "device"])
    ap.add_argument("--lengths", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--workload", default="librispeech-100", choices=sorted(WORKLOADS))
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--gemms", action="store_true")
    args = ap.parse_args()
    w = WORKLOADS[args.workload]
    x = make_inputs(w.scaled(batch=args.batch) if args.batch else w)
    tdt = getattr(torch, args.dtype)
    xs = [torch.from_numpy(a).to("cuda", tdt) for a in (x.enc, x.pred, x.weight, x.bias)]
    lengths = args.lengths or ("cpu" if args.checks == "device" else "cuda")
    ints = [torch.from_numpy(x.targets).to("cuda")] + [
        torch.from_numpy(a).to(lengths) for a in (x.enc_lengths, x.target_lengths)]
    kw = dict(reduction="sum", max_workspace_bytes=parse_bytes(args.budget),
              sample_wise=args.sample_wise, checks=args.checks)

    def call():
        out = cutrans.transducer_loss(*xs, *ints, **kw)
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
        return out
    for _ in range(3):
        call()
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        call()
        walls.append((time.perf_counter() - t0) * 1e3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.profiler.record_function(SPAN):
            call()
    per = defaultdict(lambda: [0.0, 0])
    gemms = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        if timeline.is_gpu_activity(e):  # not the record_function's GPU-side range
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0.0)
            cls = _class(e.key)
            for table, key in ((per, cls), (gemms, e.key if cls == GEMM else None)):
                if key is not None:
                    table[key][0] += us
                    table[key][1] += e.count
    total = sum(v[0] for v in per.values()) / 1e3
    print(f"{args.workload}{f' (B={args.batch})' if args.batch else ''} {args.dtype} budget "
          f"{args.budget}{' sample-wise' if args.sample_wise else ''} checks={args.checks} "
          f"lengths={lengths}: "
          f"wall median {sorted(walls)[len(walls) // 2]:.2f} ms (5 calls, host clock + "
          f"synchronize); GPU kernels {total:.2f} ms (profiled call)")
    for name, (us, n) in sorted(per.items(), key=lambda kv: -kv[1][0]):
        print(f"  {name:<40} {us / 1e3:8.3f} ms  {n:5d} launches")
    if args.gemms:
        for name, (us, n) in sorted(gemms.items(), key=lambda kv: -kv[1][0]):
            print(f"    GEMM {us / 1e3:8.3f} ms {n:5d}x  {name[:150]}")
    try:
        span, acts = timeline.from_profiler_events(prof.events(), SPAN)
        print(timeline.format_report(timeline.idle_report(span, acts), _class))
    except (AttributeError, ValueError) as e:  # a torch whose events lack time ranges
        print(f"  GPU idle: not available from this profiler ({e})")


if __name__ == "__main__":
    main()
