"""Run a benchmark: for each method, estimate, then measure it in a fresh subprocess.

``run_benchmark`` returns a plain dict (the ``--json`` document's ``runs[i]``): the workload
with its drawn lengths, the accuracy check (the slice, the float64 reference, the baselines'
errors and the rule), and one result per method with status ``ok`` | ``does-not-fit`` |
``not-installed`` | ``unavailable`` (installed, but cannot run here) | ``not-applicable``
(a fused budget below one lattice row) | ``error``, the measured
numbers, ratios against the batched baseline and the GEMM roof measured in the same run,
and the agreement verdict (``accuracy.judge``).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from . import accuracy, measure
from .methods import (CUTRANS_FAMILIES, HALF, Method, estimate_bytes, fits, fused_chunk,
                      fused_workspace_rule, missing_dependency)
from .worker import RESULT_TAG, run_spec

#: relative tolerance of the full-size loss cross-check (information only), per dtype
TOLERANCE = {"float64": 1e-7, "float32": 2e-4, "float16": 3e-2, "bfloat16": 6e-2}


@dataclass
class Settings:
    """Everything a run needs besides the workload."""

    device: str = "cpu"
    dtype: str = "float32"
    repeat: int = 3
    warmup: int = 1
    seed: int = 0
    memory_limit: int | None = None  # bytes; None -> what the device has available now
    isolate: bool = True  # one subprocess per method (the fair CPU memory comparison)
    progress: bool = True
    timeout_s: float | None = None
    max_seconds: float | None = 6.0  # stop timed calls after this much (at least one call)
    check_samples: int = accuracy.DEFAULT_SAMPLES  # accuracy slice: first samples (0: off)
    check_size: int = accuracy.DEFAULT_SIZE  # accuracy slice: at most rows x V elements
    accuracy_only: bool = False  # only the accuracy check (no full-size runs)
    extra_env: dict = field(default_factory=dict)


def _run_isolated(spec: dict, timeout_s) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    env = dict(os.environ, **measure.MALLOC_ENV)
    try:
        proc = subprocess.run([sys.executable, "-m", "cutrans.bench.worker", path], env=env,
                              stdout=subprocess.PIPE, stderr=None, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "message": f"timed out after {timeout_s:.0f} s"}
    finally:
        os.unlink(path)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else \
        f"worker exited with {proc.returncode}"
    return {"status": "error", "message": why}


def _bar(done: int, total: int, width: int = 20) -> str:
    k = round(width * done / max(total, 1))
    return "[" + "#" * k + "-" * (width - k) + f"] {done}/{total}"


def _measure(spec: dict, settings: Settings) -> dict:
    if settings.isolate:
        return _run_isolated(spec, settings.timeout_s)
    return run_spec(spec)


def _write_reference(workload, settings: Settings, path: str) -> dict:
    """Cut the check slice, compute its float64 reference into ``path``; the slice's doc."""
    from .workloads import make_inputs

    x = accuracy.round_inputs(make_inputs(workload, settings.seed), settings.dtype)
    xs = accuracy.check_slice(x, settings.check_samples, settings.check_size)
    ref, dt = measure.cpu_timer(lambda: accuracy.reference(xs, settings.dtype))
    np.savez(path, **ref)
    doc = accuracy.slice_info(xs, x)
    doc.update(reference_loss=float(ref["loss"]),
               reference="cutrans NumPy backend, float64 (inputs rounded to the dtype); "
               "loss-only rows: float64 loss on their own input logits", reference_s=dt,
               max_elements=settings.check_size)
    return doc


def run_benchmark(workload, methods: list[Method], settings: Settings) -> dict:
    """Measure ``methods`` on ``workload``; see the module docstring for the result."""
    from .workloads import lattice_sizes

    sizes = lattice_sizes(workload, settings.seed)
    available = settings.memory_limit or measure.available_memory(settings.device)
    tmp = tempfile.mkdtemp(prefix="cutrans-bench-")
    try:
        check, check_doc = None, None
        if settings.check_samples > 0 and any(m.kind != "gemm" for m in methods):
            if settings.progress:
                sys.stderr.write("float64 reference on the accuracy-check slice ...\n")
            path = os.path.join(tmp, "reference.npz")
            check_doc = _write_reference(workload, settings, path)
            check = {"path": path, "samples": settings.check_samples,
                     "max_elements": settings.check_size}
        spec0 = {"workload": workload.to_dict(), "seed": settings.seed,
                 "dtype": settings.dtype, "device": settings.device,
                 "repeat": settings.repeat, "warmup": settings.warmup,
                 "max_seconds": settings.max_seconds, "check": check,
                 "accuracy_only": settings.accuracy_only}
        results = [_run_method(i, m, methods, sizes, available, spec0, settings)
                   for i, m in enumerate(methods)]
        if settings.progress:
            end = "\r" if sys.stderr.isatty() else ""
            sys.stderr.write(f"{end}{_bar(len(methods), len(methods))} done\033[K\n"
                             if end else f"{_bar(len(methods), len(methods))} done\n")
            sys.stderr.flush()
        baselines = _baseline_errors(results, spec0, settings) if check else {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base_key = _ratios(results, settings.dtype)
    ref = _loss_crosscheck(results, TOLERANCE[settings.dtype])
    if check_doc is not None:
        fl, fg = accuracy.floors(settings.dtype, check_doc["reference_loss"])
        check_doc.update(baselines=baselines, rule={
            "k": accuracy.K, "cap_factor": accuracy.CAP_FACTOR, "floor_loss": fl,
            "floor_grad": fg,
            "cap_loss": accuracy.CAP_FACTOR * fl, "cap_grad": accuracy.CAP_FACTOR * fg})
        _agreement(results, baselines, settings.dtype, check_doc["reference_loss"])
    else:
        for r in results:
            r["agrees"] = None
    requested = [r for r in results if r["family"] in CUTRANS_FAMILIES]
    return {"workload": dict(workload.to_dict(), **sizes), "dtype": settings.dtype,
            "device": settings.device, "available_bytes": int(available),
            "accuracy_only": settings.accuracy_only,
            "ratio_baseline": base_key, "reference": ref, "check": check_doc,
            "check_skipped": None if check_doc is not None else (
                "--check-samples 0" if settings.check_samples <= 0
                else "no row computes a loss"),
            "results": results,
            # rows that failed (errors, timeouts), and whether a requested cutrans row ran
            "failed": [r["label"] for r in results if r["status"] == "error"],
            "cutrans_measured": not requested or any(r["status"] == "ok" for r in requested),
            "all_agree": all(r.get("agrees") is not False for r in results),
            "cutrans_agree": all(r.get("agrees") is not False for r in results
                                 if r["family"] in CUTRANS_FAMILIES)}


def _run_method(i, m, methods, sizes, available, spec0, settings) -> dict:
    prefix = f"{_bar(i, len(methods))} {m.label}:" if settings.progress else None
    est = estimate_bytes(m, sizes, settings.dtype, settings.device)
    row = {"method": m.key, "label": m.label, "family": m.family, "kind": m.kind,
           "tf32": m.tf32, "estimate_bytes": est["call"], "needs_bytes": est["total"]}
    if m.family == "fused":
        row["chunk_rows"], row["budget_bytes"] = fused_chunk(sizes, m, settings.dtype)
    if m.tf32 and settings.device == "cpu":
        row["note"] = ("no TF32 on the CPU: the NumPy backend emulates TF32 rounding "
                       "(accuracy as on a GPU; time is float32's)")
    why = missing_dependency(m, settings.device)
    if why:
        row.update(status="not-installed", message=why)
    elif m.family == "fused" and row["chunk_rows"] == 0:
        per_row, fixed = fused_workspace_rule(sizes, settings.dtype)
        least = per_row + fixed
        row.update(status="not-applicable",
                   message=f"budget below one lattice row + the fixed W and dW buffers "
                           f"({measure.fmt_bytes(least)}) at this V, H")
    elif not fits(est["total"], available) and not settings.accuracy_only:
        row.update(status="does-not-fit",
                   message=f"does not fit: needs ~{measure.fmt_bytes(est['total'])} "
                           f"(available {measure.fmt_bytes(available)})")
    else:
        row.update(_measure(dict(spec0, method=m.to_spec(), progress=prefix), settings))
    if row.get("times_s"):
        row["time_median_s"] = statistics.median(row["times_s"])
    return row


def _baseline_errors(results, spec0, settings) -> dict:
    """Slice errors of the batched baselines: from their rows, or from a slice-only run
    when they did not run at full size (not selected, does not fit)."""
    fams = ["baseline"] + (["baseline-autocast"] if settings.dtype in HALF else [])
    out = {}
    for fam in fams:
        row = next((r for r in results if r["family"] == fam and r.get("accuracy")), None)
        if row is not None:
            out[fam] = {"errors": row["accuracy"], "from": "its row"}
            continue
        m = Method(fam)
        if missing_dependency(m, settings.device):
            continue
        res = _measure(dict(spec0, method=m.to_spec(), progress=None, accuracy_only=True),
                       settings)
        if res.get("accuracy"):
            out[fam] = {"errors": res["accuracy"], "from": "a slice-only run"}
        else:
            out[fam] = {"errors": None, "from": res.get("message", res.get("status"))}
    return out


def _ratios(results, dtype: str):
    """Ratios vs the reference baseline (the autocast row for half dtypes when it ran, else
    the plain batched one) and, for fused rows, vs the GEMM roof of the same precision."""
    ok = {r["method"]: r for r in results if r["status"] == "ok"}
    base = (ok.get("baseline-autocast") if dtype in HALF else None) or ok.get("baseline")
    for r in results:
        r["memory_vs_baseline"] = r["total_vs_baseline"] = r["time_vs_baseline"] = None
        r["time_vs_roof"] = None
        if r["status"] != "ok" or r.get("time_median_s") is None:
            continue
        if base is not None and base.get("time_median_s"):
            if base["peak_bytes"] > 0 and r["kind"] != "gemm":  # the roof's buffers: set-up
                r["memory_vs_baseline"] = r["peak_bytes"] / base["peak_bytes"]
            if base.get("total_peak_bytes") and r["kind"] != "gemm":
                r["total_vs_baseline"] = r["total_peak_bytes"] / base["total_peak_bytes"]
            r["time_vs_baseline"] = r["time_median_s"] / base["time_median_s"]
        roof = ok.get("gemm-roof:tf32" if r["tf32"] else "gemm-roof")
        if r["family"] == "fused" and roof is not None and roof.get("time_median_s"):
            r["time_vs_roof"] = r["time_median_s"] / roof["time_median_s"]
    return base["method"] if base is not None else None


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def _loss_crosscheck(results, tol) -> dict:
    """Full-size loss of every row vs the reference row's (information, not the verdict).

    Reference: the batched baseline when it ran, else the first cutrans row that ran.
    """
    ok = [r for r in results if r["status"] == "ok" and r.get("loss") is not None]
    ordered = sorted(ok, key=lambda r: r["family"] != "baseline")
    ref = {"loss": ordered[0]["loss"] if ordered else None,
           "loss_from": ordered[0]["method"] if ordered else None, "tolerance": tol}
    for r in ok:
        r["loss_rel_diff"] = _rel(r["loss"], ref["loss"])
    ref["max_loss_rel_diff"] = max((r["loss_rel_diff"] for r in ok), default=None)
    return ref


def _agreement(results, baselines: dict, dtype: str, loss: float) -> None:
    """The verdict of every row that ran the accuracy check (``accuracy.judge``)."""
    base = accuracy.baseline_errors(b["errors"] for b in baselines.values() if b["errors"])
    for r in results:
        if r["status"] != "ok" or not r.get("accuracy"):
            r["agrees"] = None
            continue
        j = accuracy.judge(r["accuracy"], base, dtype, loss, bool(r.get("tf32")))
        r["agrees"] = j["agrees"]
        r["accuracy_allowed"] = j["allowed"]
        r["error_vs_baseline"] = j["vs_baseline"]
