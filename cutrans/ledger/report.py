"""``python -m cutrans ledger``: modelled H100 times and memory, the validation gate, targets.

Without ``--workload``: the validation gate (replay of commit 5684109 vs its measured
profile) and the current code modelled on the issue-9 configurations, against their
targets. With ``--workload``: one configuration, per kernel class.

Every time and memory figure printed here is MODELLED (``model.py``, ``dry_run.py``): a
model of an H100 run built from one measurement (GPU-FINDINGS.md). It never replaces a
measurement; a GPU run decides.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import dataclass

from ..bench.cli import check_output_path, nonneg_int, positive_size
from . import model, replay
from .dryrun import DEFAULT_BUDGET, PATHS, PROFILED_WORKLOAD, dry_run, get_shape, workload_names
from .model import SYNC_KINDS

DTYPES = ("float32", "bfloat16", "float16", "float64")
GB = 1e9
CAVEAT = ("MODELLED: a cost model fitted to one H100 profile (of commit 5684109; BENCHMARKS.md, "
          "'Modelled H100 times'); it never replaces a measurement.")
#: own allocation on the one-pass path: <= max_workspace_bytes + OWN_PER_POSITION * B (T + U)
OWN_PER_POSITION = 8  # bytes: device plan + targets (~4 B per label slot) + per-sample arrays


# ------------------------------------------------------------------ one configuration
def class_table(launches) -> list[dict]:
    """Per label: calls, bytes, FLOPs, modelled ms, the bound of most of its time."""
    rows: dict[str, dict] = {}
    for rec in launches:
        if rec.kind in SYNC_KINDS:
            continue
        c = model.cost(rec)
        r = rows.setdefault(rec.label, {"class": rec.label, "calls": 0, "bytes": 0, "flops": 0,
                                        "modelled_ms": 0.0, "_bound": {}})
        r["calls"] += 1
        r["bytes"] += rec.bytes
        r["flops"] += rec.flops
        r["modelled_ms"] += c.seconds * 1e3
        r["_bound"][c.bound] = r["_bound"].get(c.bound, 0.0) + c.seconds
    out = sorted(rows.values(), key=lambda r: -r["modelled_ms"])
    total = sum(r["modelled_ms"] for r in out) or 1.0
    for r in out:
        r["bound"] = max(r.pop("_bound").items(), key=lambda kv: kv[1])[0]
        r["share"] = r["modelled_ms"] / total
    return out


def evaluate(run) -> dict:
    """Modelled time, roof and memory of a ``DryRun``."""
    cfg = run.config
    table = class_table(run.launches)
    serial_ms = sum(r["modelled_ms"] for r in table)
    total_ms = model.gpu_seconds(run.launches) * 1e3  # the side stream overlapped
    n_launches = sum(rec.kind not in SYNC_KINDS for rec in run.launches)
    roof_ms = None if cfg["path"] == "logits" else model.gemm_roof(
        cfg["rows"], cfg["hidden"], cfg["vocab"], cfg["dtype"], cfg["tf32"]) * 1e3
    mem = dict(run.memory)
    B, T, U = cfg["batch"], cfg["frames"], cfg["labels"]
    mem["own_bound"] = cfg["budget"] + OWN_PER_POSITION * B * (T + U)
    wall_ms = model.wall_seconds(total_ms / 1e3, n_launches) * 1e3
    # x_roof: the wall time over the roof, as the bench's time/roof (wall over wall)
    return {"config": cfg, "schedule": run.schedule, "classes": table,
            "modelled_ms": total_ms, "serial_ms": serial_ms, "wall_ms": wall_ms,
            "roof_ms": roof_ms, "x_roof": wall_ms / roof_ms if roof_ms else None,
            "memory": mem, "launches": n_launches,
            "overlapped": any(rec.stream for rec in run.launches)}


def _gb(n) -> str:
    return f"{n / GB:.3f} GB"


def format_config(ev: dict, launches=None, n_launches: int = 0) -> str:
    cfg, sch, mem = ev["config"], ev["schedule"], ev["memory"]
    lines = [
        f"workload {cfg['workload']}: B={cfg['batch']} T={cfg['frames']} U={cfg['labels']} "
        f"V={cfg['vocab']} H={cfg['hidden']}, {cfg['rows']:,} lattice rows; {cfg['dtype']}"
        f"{' + TF32' if cfg['tf32'] else ''}, {cfg['path']}, budget {cfg['budget']:,} B"
        f"{', sample-wise' if cfg['sample_wise'] else ''}",
        f"schedule: {sch.get('groups')} groups ({sch.get('resident_groups')} resident, "
        f"{sch.get('split_chunks')} split chunks), chunk {sch.get('chunk_rows'):,} rows; "
        f"{ev['launches']:,} launches",
        f"{'class':<22}{'calls':>7}{'GB moved':>10}{'TFLOP':>9}{'modelled ms':>13}"
        f"{'share':>7}  bound (modelled)",
        "-" * 80]
    for r in ev["classes"]:
        lines.append(f"{r['class']:<22}{r['calls']:>7}{r['bytes'] / GB:>10.2f}"
                     f"{r['flops'] / 1e12:>9.2f}{r['modelled_ms']:>13.2f}{r['share']:>7.0%}  "
                     f"{r['bound']}")
    lines.append("-" * 80)
    total = f"total: {ev['modelled_ms']:.2f} ms of GPU time modelled"
    if ev["overlapped"]:
        total += (f" (pipelined: the side stream's lattices overlapped, {ev['serial_ms']:.2f} "
                  f"ms in sequence; no slowdown of kernels sharing the GPU modelled)")
    lines.append(total)
    wall = (f"wall (modelled): {ev['wall_ms']:.2f} ms = GPU time + {ev['launches']:,} "
            f"launches x {model.HOST_PER_LAUNCH * 1e6:.0f} us of host time (measured on an "
            f"H100)")
    if ev["x_roof"] is not None:
        wall += (f"; three-GEMM roof at {cfg['dtype']}{' TF32' if cfg['tf32'] else ''}: "
                 f"{ev['roof_ms']:.2f} ms modelled -> {ev['x_roof']:.2f}x roof (modelled)")
    lines.append(wall)
    memory = (f"memory (modelled): inputs {_gb(mem['inputs'])} + gradients "
              f"{_gb(mem['gradients'])} + cutrans's own {_gb(mem['own'])} = total "
              f"{_gb(mem['total'])}")
    if cfg["path"] == "one-pass":
        memory += (f"; one-pass bound on own: budget + {OWN_PER_POSITION} B(T+U) = "
                   f"{_gb(mem['own_bound'])}")
    lines.append(memory)
    rates = {}
    for rec in launches or ():
        if rec.kind == "gemm":
            _, _, _, in_t, out_t, tf, aligned = rec.gemm
            name = f"{in_t}->{out_t}{' tf32' if tf else ''}{', aligned' if aligned else ''}"
            rates[name] = (model.gemm_rate(in_t, out_t, tf, aligned),
                           model.gemm_rate_source(in_t, out_t, tf, aligned))
    for name, (rate, source) in rates.items():
        lines.append(f"GEMM rate used by the model, {name}: {rate / 1e12:.0f} TFLOP/s, {source}")
    if launches and n_launches:
        lines.append(f"first {min(n_launches, len(launches))} launches (modelled us):")
        for rec in [r for r in launches if r.kind not in SYNC_KINDS][:n_launches]:
            c = model.cost(rec)
            lines.append(f"  {rec.name:<20} {rec.types:<22} grid {rec.grid:>8} block "
                         f"{rec.block:>4}  {rec.bytes / 1e6:>10.2f} MB {rec.flops / 1e9:>10.2f}"
                         f" GFLOP {c.seconds * 1e6:>10.1f} us modelled ({c.bound})")
    return "\n".join(lines)


# ------------------------------------------------------------------ issue 9 targets
@dataclass(frozen=True)
class Target:
    """An issue-9 target for a configuration; limits None where the issue sets none."""

    title: str
    workload: str
    dtype: str
    tf32: bool = False
    max_x_roof: float | None = None
    max_ms: float | None = None
    ms_source: str = ""
    max_total_gb: float | None = None
    own_bound: bool = False


TARGETS = (
    Target("librispeech fp32", PROFILED_WORKLOAD, "float32", max_x_roof=1.5, max_ms=44.0,
           ms_source="2x faster than the 88 ms fp32 batched baseline (measured)"),
    Target("librispeech bf16", PROFILED_WORKLOAD, "bfloat16", max_x_roof=2.0, max_ms=28.0,
           ms_source="2x faster than the 56 ms autocast(bf16) baseline (measured)"),
    Target("librispeech fp32+TF32", PROFILED_WORKLOAD, "float32", tf32=True),
    Target("headline fp32", "paper-headline", "float32", max_x_roof=2.0, max_total_gb=6.0,
           own_bound=True),
    Target("headline bf16", "paper-headline", "bfloat16", max_x_roof=2.0, max_total_gb=3.5,
           own_bound=True),
)


def check_target(t: Target, ev: dict) -> list[dict]:
    """``{what, modelled, limit, met}`` per limit of ``t``."""
    out = []
    if t.max_x_roof is not None:
        out.append({"what": "time / three-GEMM roof", "modelled": ev["x_roof"],
                    "limit": t.max_x_roof, "met": ev["x_roof"] <= t.max_x_roof})
    if t.max_ms is not None:
        out.append({"what": f"wall time, ms ({t.ms_source})", "modelled": ev["wall_ms"],
                    "limit": t.max_ms, "met": ev["wall_ms"] <= t.max_ms})
    mem = ev["memory"]
    if t.max_total_gb is not None:
        out.append({"what": "total peak, GB", "modelled": mem["total"] / GB,
                    "limit": t.max_total_gb, "met": mem["total"] <= t.max_total_gb * GB})
    if t.own_bound:
        out.append({"what": "own allocation, GB (budget + 8 B(T+U))", "modelled":
                    mem["own"] / GB, "limit": mem["own_bound"] / GB,
                    "met": mem["own"] <= mem["own_bound"]})
    return out


def run_targets(budget: int = DEFAULT_BUDGET) -> list[dict]:
    out = []
    for t in TARGETS:
        ev = evaluate(dry_run(get_shape(t.workload), t.dtype, budget=budget, tf32=t.tf32))
        out.append({"target": t.title, "evaluation": ev, "checks": check_target(t, ev)})
    return out


def format_targets(results) -> str:
    lines = [f"{'configuration (one-pass)':<24}{'wall ms':>12}{'roof ms':>10}{'x roof':>8}"
             f"{'total GB':>10}  target checks (modelled)", "-" * 100]
    for r in results:
        ev = r["evaluation"]
        checks = "; ".join(f"{c['what']} {c['modelled']:.3g} <= {c['limit']:.3g}: "
                           f"{'met' if c['met'] else 'MISSED'}" for c in r["checks"]) or \
            "no target (reported only)"
        lines.append(f"{r['target']:<24}{ev['wall_ms']:>12.1f}{ev['roof_ms']:>10.1f}"
                     f"{ev['x_roof']:>8.2f}{ev['memory']['total'] / GB:>10.2f}  {checks}")
    lines.append("-" * 100)
    lines.append("largest modelled kernel classes beyond the GEMMs:")
    for r in results:
        ev = r["evaluation"]
        top = [c for c in ev["classes"] if not c["class"].startswith("gemm")][:4]
        lines.append(f"  {r['target']:<22} " + ", ".join(
            f"{c['class']} {c['modelled_ms']:.1f} ms ({c['bound']})" for c in top))
    return "\n".join(lines)


def format_validation(rows) -> str:
    lines = [f"{'class':<16}{'profiled ms (measured)':>24}{'modelled ms':>13}{'ratio':>8}",
             "-" * 61]
    for r in rows:
        prof = "-" if r["profiled_ms"] is None else f"{r['profiled_ms']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['class']:<16}{prof:>24}{r['modelled_ms']:>13.2f}{ratio:>8}")
    verdict = "PASS" if replay.gate_passes(rows) else "FAIL"
    lines.append(f"gate (every profiled class and the total within 2x): {verdict}")
    return "\n".join(lines)


def constants() -> dict:
    return {"hbm_bytes_per_s": model.BW, "column_sum_bytes_per_s": model.COLUMN_SUM_RATE,
            "gemm_flops_per_s": {f"{a}->{b}{' tf32' if t else ''}": r
                                 for (a, b, t), r in model.GEMM_RATES.items()},
            "unmeasured_gemm_rates": [f"{a}->{b}" for a, b, _ in model.UNMEASURED_RATES],
            "aligned_16bit_gemm_flops_per_s": model.ALIGNED_16BIT_RATE,
            "sms": model.SMS, "t_wave_s (fitted)": model.T_WAVE,
            "t_step_s (fitted)": model.T_STEP}


# ------------------------------------------------------------------ CLI
# options that only describe one --workload configuration
_CONFIG_OPTIONS = ("dtype", "allow_tf32", "sample_wise", "pipeline", "path", "seed", "launches")


def _check_options(p, args) -> None:
    """Usage errors for options the chosen mode would ignore or mislabel."""
    if args.workload is None:
        unused = [f"--{k.replace('_', '-')}" for k in _CONFIG_OPTIONS
                  if getattr(args, k) != p.get_default(k)]
        if unused:
            p.error(f"{', '.join(unused)}: describe one configuration; add --workload")
        if args.validate and args.budget != p.get_default("budget"):
            p.error("--budget: the validation gate replays a fixed schedule; drop --validate")
    elif args.validate:
        p.error("--validate: runs the validation gate only; drop --workload")
    if args.allow_tf32 and args.dtype != "float32":
        p.error("--allow-tf32: float32 GEMMs only (--dtype float32)")
    if args.path != "one-pass" and args.pipeline:
        p.error(f"--pipeline: the one-pass path only (--path {args.path})")
    if args.path == "logits" and (args.sample_wise or args.allow_tf32):
        p.error("--path logits: the loss on logits has no chunks or GEMMs "
                "(no --sample-wise, --allow-tf32)")
    try:
        check_output_path("--json", args.json)
    except ValueError as exc:
        p.error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cutrans ledger",
        description="Modelled H100 time and memory of a cutrans call, from its real launch "
                    "sequence (no GPU needed). " + CAVEAT)
    p.add_argument("--workload", choices=workload_names(),
                   help="model one configuration (default: the validation gate and the "
                        "targets of BENCHMARKS.md)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--allow-tf32", action="store_true", help="float32 GEMMs on TF32")
    p.add_argument("--budget", type=positive_size, default=DEFAULT_BUDGET,
                   help="max_workspace_bytes, e.g. 512M (default 512 MiB)")
    p.add_argument("--sample-wise", action="store_true")
    p.add_argument("--pipeline", action="store_true",
                   help="the pipelined one pass (CUTRANS_PIPELINE=on): lattices on a side "
                        "stream, overlapped in the model")
    p.add_argument("--path", choices=PATHS, default="one-pass",
                   help="one-pass: reduction mean/sum (transducer_loss); two-pass: "
                        "reduction none (forward + backward); logits: rnnt_loss on packed "
                        "logits")
    p.add_argument("--seed", type=int, default=0, help="length draw of bench workloads")
    p.add_argument("--launches", type=nonneg_int, default=0, metavar="N",
                   help="also list the first N launches")
    p.add_argument("--validate", action="store_true",
                   help="only the validation gate (replay of 5684109 vs its profile)")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    return p


def main(argv=None) -> int:
    """Exit status 1 when the validation gate fails (it runs without --workload)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_options(parser, args)
    passes = True
    doc: dict = {"caveat": CAVEAT, "device_modelled": "NVIDIA H100 80GB HBM3",
                 "date": datetime.date.today().isoformat(), "constants": constants()}
    print(f"cutrans ledger -- {CAVEAT}")
    if args.workload is None:
        rows = replay.validation_table()
        passes = replay.gate_passes(rows)
        doc["validation"] = {"rows": rows, "passes": passes}
        print("\nValidation gate: replay of commit 5684109 (hand-written) vs its H100 profile")
        print(format_validation(rows))
        hc = replay.headline_check()
        doc["validation"]["headline"] = hc
        print(f"out of sample (nothing fitted on it): the replay at the headline shape, fp32: "
              f"{hc['modelled_s']:.1f} s modelled vs {hc['measured_s']} s measured "
              f"({hc['ratio']:.2f}x); GEMMs {hc['gemm_share']:.0%} modelled vs "
              f"{hc['gemm_share_measured']:.0%} measured, cupy_sum {hc['cupy_sum_share']:.0%} "
              f"modelled vs {hc['cupy_sum_share_measured']:.0%} measured (B=64 slice)")
        if not args.validate:
            try:
                results = run_targets(args.budget)
            except ValueError as exc:  # e.g. a budget below one lattice row
                parser.error(str(exc))
            doc["targets"] = results
            print(f"\nCurrent code, modelled H100, vs the targets (budget {args.budget:,} B)")
            print(format_targets(results))
    else:
        try:
            run = dry_run(get_shape(args.workload, args.seed), args.dtype, budget=args.budget,
                          sample_wise=args.sample_wise, tf32=args.allow_tf32, path=args.path,
                          pipeline=args.pipeline)
        except ValueError as exc:  # e.g. a budget below one lattice row
            parser.error(str(exc))
        ev = evaluate(run)
        doc["evaluation"] = ev
        print(format_config(ev, run.launches, args.launches))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
        print(f"\nwrote {args.json}")
    return 0 if passes else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
