"""``python -m cutrans bench``: options, the run (or a sweep for ``--plot``), the outputs."""
from __future__ import annotations

import argparse
import sys

from . import measure
from . import accuracy
from .methods import FAMILIES, build_methods, default_families, parse_budgets
from .report import (ACCURACY_NOTE, JSON_SCHEMA, NOTES, format_table, plot_sweep,
                     require_matplotlib, write_json)
from .runner import Settings, run_benchmark
from .workloads import DEFAULT_WORKLOAD, WORKLOADS, custom_workload

DEFAULT_BUDGETS = "512M,64M,sample"  # 512M: the API default (DEFAULT_WORKSPACE_BYTES)
DTYPES = ("float32", "float64", "float16", "bfloat16")


def _positive_int(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return n


def nonneg_int(text):
    """argparse type: an integer >= 0 (also the ledger's)."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return n


def positive_size(text):
    """argparse type: a positive size such as 512M (also the ledger's and --budgets')."""
    try:
        return measure.parse_positive_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text):
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return x


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``bench`` options (shared by ``python -m cutrans bench`` and the tests)."""
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: NumPy cutrans + PyTorch CPU; cuda: CuPy cutrans + PyTorch CUDA")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default=DEFAULT_WORKLOAD,
                   help=f"named shape (default {DEFAULT_WORKLOAD}); see --list")
    for dim, doc in (("batch", "B"), ("frames", "T (max frames)"), ("labels", "U (max labels)"),
                     ("vocab", "V"), ("hidden", "H (joint size)")):
        p.add_argument(f"--{dim}", type=_positive_int, help=f"custom {doc}; overrides the "
                       "workload's value")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--repeat", type=_positive_int, help="timed calls per method (median); "
                   "default: the workload's (3 for cpu-small)")
    p.add_argument("--max-seconds", type=float, default=6.0,
                   help="stop a method's timed calls once they took this long (at least one "
                   "call; default 6; 0 = always --repeat calls)")
    p.add_argument("--warmup", type=nonneg_int,
                   help="untimed calls first (default: the workload's)")
    p.add_argument("--budgets", nargs="+", default=[DEFAULT_BUDGETS],
                   help="max_workspace_bytes of the cutrans fused rows, e.g. 64M 8M sample "
                   f"(sample: sample_wise=True, one utterance per chunk); default "
                   f"{DEFAULT_BUDGETS}")
    p.add_argument("--methods", nargs="+",
                   help=f"families to run: {', '.join(FAMILIES)} (default: all that apply: "
                   "fused-tf32 on --device cuda --dtype float32, baseline-autocast with "
                   "--dtype bfloat16/float16)")
    p.add_argument("--check-samples", type=int, default=accuracy.DEFAULT_SAMPLES,
                   help="accuracy check: run every method also on the first N samples and "
                   "compare with a float64 reference (default %(default)s; 0: no check)")
    p.add_argument("--accuracy-only", action="store_true",
                   help="only the accuracy check (every method on the slice; no timing)")
    p.add_argument("--check-size", type=positive_size, default=accuracy.DEFAULT_SIZE,
                   help="accuracy check: scale the slice's lengths down until lattice rows x "
                   "V <= this (default 8M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-limit", type=positive_size,
                   help="memory the does-not-fit check assumes (default: available now)")
    p.add_argument("--json", metavar="FILE", help="write all numbers + environment as JSON")
    p.add_argument("--plot", metavar="FILE", help="sweep the workload (see --sweep) and plot "
                   "memory and time vs size, log scale (needs matplotlib)")
    p.add_argument("--sweep", choices=("batch", "frames"), default="batch",
                   help="--plot axis: batch size, or frames and labels together")
    p.add_argument("--sweep-points", type=_positive_int, default=4,
                   help="--plot sizes: full, 1/2, 1/4, ... of the workload (default 4)")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure in this process (faster; CPU memory then less comparable)")
    p.add_argument("--timeout", type=positive_float,
                   help="seconds per method before giving up")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--list", action="store_true", help="list the named workloads and exit")
    return p


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cutrans bench",
        description="Compare cutrans fused (sample-wise / chunked) against the batched "
        "PyTorch joint + RNN-T loss and loss-on-logits libraries: peak memory, "
        "forward+backward time, ratios, and a cross-check of the loss values.")
    return add_arguments(p)


def resolve(args) -> tuple:
    """``(workload, methods, settings)`` from parsed options; ValueError on bad values."""
    base = WORKLOADS[args.workload]
    w = custom_workload(args.batch, args.frames, args.labels, args.vocab, args.hidden, base)
    if w.labels > 0 and w.vocab < 2:
        raise ValueError("--vocab: expected at least 2 (blank + one label)")
    if args.methods is None:
        families = default_families(args.device, args.dtype)
    else:
        families = [f.strip() for item in args.methods for f in item.split(",") if f.strip()]
    if args.check_samples < 0:
        raise ValueError(f"--check-samples: expected 0 or more, got {args.check_samples}")
    if args.accuracy_only and args.check_samples == 0:
        raise ValueError("--accuracy-only: needs --check-samples > 0")
    if args.accuracy_only and args.plot:
        raise ValueError("--plot: plots timings and memory, which --accuracy-only does not "
                         "measure")
    if args.max_seconds < 0:
        raise ValueError(f"--max-seconds: expected 0 or more, got {args.max_seconds:g}")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        check_output_path(option, path)
    methods = build_methods(parse_budgets(args.budgets), families, args.dtype)
    if not methods:
        raise ValueError("--methods/--budgets: nothing to run")
    settings = Settings(device=args.device, dtype=args.dtype,
                        repeat=args.repeat or w.repeat,
                        warmup=w.warmup if args.warmup is None else args.warmup,
                        seed=args.seed, memory_limit=args.memory_limit,
                        isolate=not args.no_isolate, progress=not args.quiet,
                        timeout_s=args.timeout, max_seconds=args.max_seconds or None,
                        check_samples=args.check_samples, check_size=args.check_size,
                        accuracy_only=args.accuracy_only)
    return w, methods, settings


def check_output_path(option: str, path) -> None:
    """ValueError now, not after the run, when ``path`` cannot be written."""
    import os

    if path is None:
        return
    if not path:
        raise ValueError(f"{option}: empty file name")
    if os.path.isdir(path):
        raise ValueError(f"{option}: {path} is a folder")
    if os.path.exists(path):  # opening an existing file needs only its own permission
        if not os.access(path, os.W_OK):
            raise ValueError(f"{option}: {path} is not writable")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option}: cannot create {path} (folder {folder} is not writable)")


def _check_device(device: str) -> None:
    if device != "cuda":
        return
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as exc:
        raise RuntimeError(f"--device cuda: no usable CUDA device with CuPy ({exc})") from None


def main(argv=None) -> int:
    """Entry point of ``bench``; exit status 1 if a cutrans row disagrees, a row fails, or
    no requested cutrans row could be measured."""
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.list:
        for name, w in WORKLOADS.items():
            print(f"{name:<18} B={w.batch} T<={w.frames} U<={w.labels} V={w.vocab} "
                  f"H={w.hidden} [{w.lengths}]  {w.description}")
        return 0
    try:
        workload, methods, settings = resolve(args)
        if args.plot:
            require_matplotlib()
        _check_device(settings.device)
    except (ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    env = measure.environment(settings.device, argv)
    load = (env.get("load_average") or [0])[0]
    if settings.device == "cpu" and load > 0.5 * (env["cpu_count"] or 1) and settings.progress:
        print(f"note: CPU load average is {load:.2f} on {env['cpu_count']} CPUs: other "
              "processes are running, so times will be noisy", file=sys.stderr)
    sizes = [workload]
    if args.plot:
        n = args.sweep_points
        if args.sweep == "batch":
            sizes = sorted({workload.scaled(batch=max(1, workload.batch >> k)) for k in
                            range(n - 1, -1, -1)}, key=lambda w: w.batch)
        else:
            scaled = [workload.scaled(length_scale=2.0 ** -k) for k in range(n - 1, -1, -1)]
            sizes = list({(x.frames, x.labels): x for x in scaled}.values())  # distinct
    runs = []
    for w in sizes:
        run = run_benchmark(w, methods, settings)
        runs.append(run)
        print(format_table(run, env))
        print()
    print(ACCURACY_NOTE if settings.accuracy_only else NOTES)
    doc = {"schema": JSON_SCHEMA, "environment": env,
           "settings": {"repeat": settings.repeat, "warmup": settings.warmup,
                        "max_seconds": settings.max_seconds, "dtype": settings.dtype,
                        "device": settings.device,
                        "seed": settings.seed, "isolate": settings.isolate,
                        "memory_limit_bytes": settings.memory_limit,
                        "methods": [m.key for m in methods],
                        "check_samples": settings.check_samples,
                        "check_size": settings.check_size,
                        "accuracy_only": settings.accuracy_only},
           "runs": runs}
    if args.plot:
        doc["sweep"] = {"axis": args.sweep, "plot": args.plot}
    if args.json:  # first: the numbers survive a failing plot
        write_json(args.json, doc)
        print(f"json written to {args.json}")
    if args.plot:
        plot_sweep(args.plot, {"axis": args.sweep, "runs": runs})
        print(f"plot written to {args.plot}")
    failed = any(run["failed"] for run in runs)
    measured = all(run["cutrans_measured"] for run in runs)
    # exit 1: a cutrans row less exact than the rule, any row failing, or no requested
    # cutrans row measured (does not fit / not applicable); unavailable libraries: 0
    return 0 if all(run["cutrans_agree"] for run in runs) and not failed and measured else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
