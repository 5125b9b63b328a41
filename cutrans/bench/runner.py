"""Run a benchmark: for each method, estimate, then measure it in a fresh subprocess.

``run_benchmark`` returns a plain dict (the ``--json`` document's ``runs[i]``): the workload
with its drawn lengths, and one result per method with status ``ok`` | ``does-not-fit`` |
``not-installed`` | ``error``, the measured numbers, ratios against the batched baseline
measured in the same run, and the agreement check (loss and gradient norm against the
reference, within a per-dtype tolerance).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from . import measure
from .methods import Method, estimate_bytes, fits, fused_chunk, missing_dependency
from .worker import RESULT_TAG, measure_method

#: relative tolerance of the cross-method check, per dtype (loss and gradient norm)
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


def run_benchmark(workload, methods: list[Method], settings: Settings) -> dict:
    """Measure ``methods`` on ``workload``; see the module docstring for the result."""
    from .workloads import lattice_sizes

    sizes = lattice_sizes(workload, settings.seed)
    available = settings.memory_limit or measure.available_memory(settings.device)
    results = []
    for i, m in enumerate(methods):
        prefix = f"{_bar(i, len(methods))} {m.label}:" if settings.progress else None
        est = estimate_bytes(m, sizes, settings.dtype)
        row = {"method": m.key, "label": m.label, "family": m.family, "kind": m.kind,
               "estimate_bytes": est["call"], "needs_bytes": est["total"]}
        if m.family == "fused":
            c = 8 if settings.dtype == "float64" else 4
            row["chunk_rows"], row["budget_bytes"] = fused_chunk(sizes, m, c)
        why = missing_dependency(m, settings.device)
        if why:
            row.update(status="not-installed", message=why)
        elif not fits(est["total"], available):
            row.update(status="does-not-fit",
                       message=f"does not fit: needs ~{est['total'] / 1e9:.3g} GB "
                               f"(available {available / 1e9:.3g} GB)")
        else:
            spec = {"workload": workload.to_dict(), "seed": settings.seed,
                    "dtype": settings.dtype, "device": settings.device,
                    "method": m.to_spec(), "repeat": settings.repeat,
                    "warmup": settings.warmup, "max_seconds": settings.max_seconds,
                    "progress": prefix}
            if settings.isolate:
                row.update(_run_isolated(spec, settings.timeout_s))
            else:
                try:
                    row.update(measure_method(spec))
                except Exception as exc:  # same contract as the worker
                    row.update(status="error", message=f"{type(exc).__name__}: {exc}")
        if row.get("times_s"):
            row["time_median_s"] = statistics.median(row["times_s"])
        results.append(row)
    if settings.progress:
        end = "\r" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{end}{_bar(len(methods), len(methods))} done\033[K\n"
                         if end else f"{_bar(len(methods), len(methods))} done\n")
        sys.stderr.flush()
    _ratios(results)
    ref = _agreement(results, TOLERANCE[settings.dtype])
    return {"workload": dict(workload.to_dict(), **sizes), "dtype": settings.dtype,
            "device": settings.device, "available_bytes": int(available),
            "reference": ref, "results": results,
            "all_agree": all(r.get("agrees") is not False for r in results)}


def _ratios(results):
    base = next((r for r in results if r["family"] == "baseline" and r["status"] == "ok"), None)
    for r in results:
        if base is None or r["status"] != "ok":
            r["memory_vs_baseline"] = r["time_vs_baseline"] = None
            continue
        r["memory_vs_baseline"] = (r["peak_bytes"] / base["peak_bytes"]
                                   if base["peak_bytes"] > 0 else None)
        r["time_vs_baseline"] = r["time_median_s"] / base["time_median_s"]


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def _agreement(results, tol) -> dict:
    """Loss of every row vs the reference loss; gradient norm within its kind's group.

    Reference: the batched baseline when it ran, else the first cutrans row that ran.
    Joint rows compare ||dL/dW||; loss-only rows compare ||dL/dlogits|| on the lattice.
    """
    ok = [r for r in results if r["status"] == "ok"]
    ordered = sorted(ok, key=lambda r: r["family"] != "baseline")
    ref = {"loss": ordered[0]["loss"] if ordered else None,
           "loss_from": ordered[0]["method"] if ordered else None, "tolerance": tol}
    grad_ref = {}
    for r in ordered:
        grad_ref.setdefault(r["kind"], r)
    for r in results:
        if r["status"] != "ok":
            r["agrees"] = None
            continue
        g = grad_ref[r["kind"]]
        r["loss_rel_diff"] = _rel(r["loss"], ref["loss"])
        r["grad_norm_rel_diff"] = _rel(r["grad_norm"], g["grad_norm"])
        r["grad_reference"] = g["method"]
        r["agrees"] = bool(r["loss_rel_diff"] <= tol and r["grad_norm_rel_diff"] <= tol)
    return ref
