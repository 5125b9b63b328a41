"""Output: the stdout tables, the ``--json`` document and the ``--plot`` figure.

JSON document (``schema: "cutrans-bench/2"``)::

    {"schema", "environment": {date, command, device, device_name, cpu_model, cpu_count,
                               memory_total_bytes, load_average, python, platform, versions},
     "settings": {repeat, warmup, max_seconds, dtype, device, seed, isolate,
                  memory_limit_bytes, methods, check_samples, check_size, accuracy_only},
     "runs": [{"workload": {name, batch, frames, labels, vocab, hidden, lengths, ...,
                            padded_rows, packed_rows, max_sample_rows, enc_lengths,
                            target_lengths},
               "dtype", "device", "available_bytes", "accuracy_only",
               "ratio_baseline": key of the row the ratios divide by (or null),
               "reference": {loss, loss_from, tolerance, max_loss_rel_diff} (full-size
                            loss cross-check, information),
               "check": null | {samples, rows, frames, labels, lengths_scaled, enc_lengths,
                                target_lengths, reference, reference_s, max_elements,
                                baselines: {family: {errors, from}},
                                reference_loss, rule: {k, cap_factor, floor_loss,
                                floor_grad, cap_loss, cap_grad}},
               "check_skipped": null | why there is no check,
               "all_agree", "cutrans_agree", "failed": [labels of error/timeout rows],
               "cutrans_measured": a requested cutrans row ran (true if none was
               requested), "results": [row, ...]}],
     "sweep": {axis, plot} (with --plot)}

A row: ``method`` (key: ``fused:<bytes>``, ``fused:sample``, ``...:tf32``, ``gemm-roof``,
``gemm-roof:tf32``, ``baseline``, ``baseline-autocast``, ``cutrans-logits``, ``torchaudio``,
``warprnnt``), ``label``, ``family``, ``kind`` (joint | logits | gemm), ``tf32``,
``estimate_bytes``, ``needs_bytes``, ``status`` (ok | does-not-fit | not-installed |
unavailable | not-applicable | error), ``message`` (not ok), ``note``; fused: ``chunk_rows``,
``budget_bytes``. When ok: ``precision`` (what the row computes in), ``setup_s``,
``warmup_s``, ``times_s``, ``time_median_s``, ``peak_bytes`` (and ``peak_rss_delta_bytes``
on CPU / ``peak_alloc_bytes`` on CUDA), ``total_peak_bytes``, ``memory_probe``,
``tracemalloc_peak_bytes``, ``loss`` and ``grad_norm`` (full size; null for the roof),
``loss_rel_diff``, ``memory_vs_baseline``, ``total_vs_baseline``, ``time_vs_baseline``,
``time_vs_roof`` (fused rows), ``accuracy`` ({quantity: error} on the check slice,
quantities loss, enc, pred, weight, bias, logits), ``accuracy_allowed``,
``error_vs_baseline`` and ``agrees`` (true | false | null when not checked).
"""
from __future__ import annotations

import json

from .measure import fmt_bytes

JSON_SCHEMA = "cutrans-bench/2"
CHECK = {True: "✓", False: "✗", None: ""}
QUANTITY_HEAD = {"loss": "loss", "enc": "d_enc", "pred": "d_pred", "weight": "dW",
                 "bias": "db", "logits": "d_logits"}


def _fmt_time(s):
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.3g}x"


def _fmt_loss(x):
    return "-" if x is None else f"{x:.6g}"


def format_table(run: dict, env: dict | None = None) -> str:
    """The speed/memory table and the accuracy table of one run, with a header naming
    shapes, dtype and device."""
    w = run["workload"]
    lines = []
    where = run["device"] + (f" ({env['device_name']}, {env['cpu_count']} CPUs)" if env else "")
    lines.append(f"workload {w['name']}: B={w['batch']} T={w['frames']} U={w['labels']} "
                 f"V={w['vocab']} H={w['hidden']} ({w['lengths']} lengths), {run['dtype']}, "
                 f"{where}")
    lines.append(f"lattice rows: padded B*T*(U+1) = {w['padded_rows']:,}; packed "
                 f"sum T_b*(U_b+1) = {w['packed_rows']:,}")
    if run.get("accuracy_only"):
        lines += [f"{r['label']:<30} {r.get('message', r['status'])}" for r in run["results"]
                  if r["status"] != "ok" and r["kind"] != "gemm"]
        return "\n".join(lines + [_verdict(run), "", *format_accuracy(run)])
    if run.get("ratio_baseline") and run["ratio_baseline"] != "baseline":
        lines.append(f"ratios (mem/base, time/base) vs {run['ratio_baseline']}")
    cpu = run["device"] == "cpu"
    mem_head = "peak RSS Δ" if cpu else "peak alloc"
    head = (f"{'method':<30} {mem_head:>11} {'total peak':>11} "
            + (f"{'tracemalloc':>11} " if cpu else "")
            + f"{'estimate':>10} {'fwd+bwd':>10} {'mem/base':>9} {'time/base':>9} "
            f"{'time/roof':>9} {'loss':>12}  ok")
    lines += [head, "-" * len(head)]
    for r in run["results"]:
        if r["status"] != "ok":
            msg = r.get("message", r["status"])
            lines.append(f"{r['label']:<30} {msg}")
            continue
        lines.append(
            f"{r['label']:<30} {fmt_bytes(r['peak_bytes']):>11} "
            f"{fmt_bytes(r.get('total_peak_bytes')):>11} "
            + (f"{fmt_bytes(r.get('tracemalloc_peak_bytes')):>11} " if cpu else "")
            + f"{fmt_bytes(r['estimate_bytes']):>10} {_fmt_time(r.get('time_median_s')):>10} "
            f"{_fmt_ratio(r.get('memory_vs_baseline')):>9} "
            f"{_fmt_ratio(r.get('time_vs_baseline')):>9} "
            f"{_fmt_ratio(r.get('time_vs_roof')):>9} {_fmt_loss(r.get('loss')):>12}  "
            f"{CHECK[r.get('agrees')]}")
    notes = [f"  {r['label']}: {r['note']}" for r in run["results"]
             if r.get("note") and r["status"] == "ok"]
    notes += [f"  {r['label']}: {r['precision']}" for r in run["results"]
              if r["family"] == "gemm-roof" and r.get("precision")]
    lines += notes
    lines.append(_verdict(run))
    if run.get("check"):
        lines += ["", *format_accuracy(run)]
    return "\n".join(lines)


def _verdict(run) -> str:
    ref = run["reference"]
    failed = run.get("failed") or []
    if failed:
        out = f"FAILED: {', '.join(failed)} (see the table); "
    else:
        out = ""
    if not run.get("cutrans_measured", True):
        out += "no cutrans row was measured (see the table); "
    if not any(r["status"] == "ok" for r in run["results"]):
        out += "nothing was measured"
    elif run["all_agree"]:
        out += ("all measured methods agree" if out else "all methods agree")
    elif run.get("cutrans_agree", False):
        out += ("cutrans agrees; a third-party method is less exact than the rule allows "
               "(information: the exit status covers cutrans's rows)")
    else:
        out += "MISMATCH: a cutrans method is less exact than the rule allows"
    if run.get("check"):
        out += " (accuracy check below)"
    else:
        out += f" (no accuracy check: {run.get('check_skipped') or '--check-samples 0'})"
    if ref.get("max_loss_rel_diff") is not None:
        out += (f"; full-size losses within rel. {ref['max_loss_rel_diff']:.2g} of "
                f"{ref['loss_from']} (information)")
    return out


def _cell(err, ratio):
    if err is None:
        return ""
    e = "inf" if err == float("inf") else ("0" if err == 0 else f"{err:.1e}")
    return e + (f" ({ratio:.2g}x)" if ratio is not None and ratio != float("inf") else "")


def format_accuracy(run: dict) -> list[str]:
    """Each method's error on the check slice and its ratio to the baselines' error."""
    c = run["check"]
    rule = c["rule"]
    scaled = ", lengths scaled down" if c["lengths_scaled"] else ""
    lines = [f"accuracy check: the first {c['samples']} samples (T<={c['frames']}, "
             f"U<={c['labels']}{scaled}; {c['rows']:,} lattice rows) against a float64 "
             f"reference ({c['reference']})",
             "error: |Δloss|/|loss|, max|Δg|/max|g| per gradient; (r x): error / the largest "
             "error of the batched baselines"]
    head = f"{'method':<30} " + " ".join(f"{h:<16}" for h in QUANTITY_HEAD.values()) + " ok"
    lines += [head, "-" * len(head)]
    rows = [(r["label"], r.get("accuracy"), r.get("error_vs_baseline"), r.get("agrees"))
            for r in run["results"] if r["status"] == "ok" and r.get("accuracy")]
    for fam, b in c["baselines"].items():
        if b["from"] == "a slice-only run" and b["errors"]:
            label = {"baseline": "torch batched", "baseline-autocast": "torch autocast"}[fam]
            rows.append((f"{label} (slice only)", b["errors"], None, None))
        elif not b["errors"]:
            lines.append(f"{fam}: no slice errors ({b['from']})")
    for label, err, ratio, ok in rows:
        ratio = ratio or {}
        cells = [_cell(err.get(q), ratio.get(q)) for q in QUANTITY_HEAD]
        lines.append(f"{label:<30} " + " ".join(f"{x:<16}" for x in cells) + f" {CHECK[ok]}")
    lines.append(f"rule ({run['dtype']}): ✗ when an error > max({rule['k']:g} x the baselines' "
                 f"error (capped at {rule['cap_factor']:g} x the floor), the floor); floors "
                 f"for this slice (mean loss L = {c['reference_loss']:.4g} per sample): "
                 f"gradients {rule['floor_grad']:.2g}, loss {rule['floor_loss']:.2g}")
    return lines


NOTES = """\
peak RSS Δ: peak resident memory above the RSS before the timed calls, each method in a fresh
  process (peak alloc on GPU: allocator peak above what was allocated before the calls).
total peak: everything live at the peak: inputs, gradients, workspaces. CPU: peak RSS minus
  the RSS after the method's libraries were imported (before its inputs were made; allocator
  caches and JIT code count too). GPU: CuPy pool + PyTorch allocated bytes at their peaks
  (the CUDA context and cuBLAS workspaces are not counted). tracemalloc: NumPy/Python only.
estimate: the call's peak predicted from shapes before running (with set-up arrays it is
  the does-not-fit check). fwd+bwd: median wall time of the timed calls (repeat, or fewer
  once --max-seconds is used up); ratios vs the batched baseline of this run.
time/roof: fused time / the time of the 3 GEMMs alone (z = h W^T, dW = dz^T h, dh = dz W on
  the packed rows) at the same precision, measured in this run.
(logits) rows: loss on precomputed padded logits only; the joint network is not included.
ok: the accuracy check (a float64 reference on a slice of the workload), not the full-size
  loss, which is information."""
ACCURACY_NOTE = """\
--accuracy-only: every method ran the check slice only (no timing, no memory, no full-size
  run; the does-not-fit check does not apply to the slice)."""


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def require_matplotlib():
    """Import matplotlib (Agg) or raise a RuntimeError that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: "
                           "pip install 'cutrans[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(path: str, sweep: dict) -> None:
    """Peak memory and time vs the swept size (log-log), one line per method.

    Sizes that did not fit are drawn at their estimate with hollow markers.
    """
    plt = require_matplotlib()
    axis = sweep["axis"]
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [r["label"] for r in sweep["runs"][-1]["results"]]
    for label in labels:
        xs, mem, est_x, est, tx, ts = [], [], [], [], [], []
        for run in sweep["runs"]:
            x = run["workload"]["batch" if axis == "batch" else "frames"]
            r = next((r for r in run["results"] if r["label"] == label), None)
            if r is None:
                continue
            if r["status"] == "ok":
                if r["peak_bytes"] > 0:  # log scale: a zero delta (tiny shapes) is not drawn
                    xs.append(x)
                    mem.append(r["peak_bytes"] / 2**20)
                tx.append(x)
                ts.append(r["time_median_s"])
            elif r["status"] == "does-not-fit":
                est_x.append(x)
                est.append(r["needs_bytes"] / 2**20)
        if not (xs or est_x or tx):
            continue
        line, = ax_m.plot(xs, mem, "o-", label=label)
        if est_x:
            ax_m.plot(est_x, est, "o--", mfc="none", color=line.get_color())
        ax_t.plot(tx, ts, "o-", color=line.get_color(), label=label)
    for ax, ylabel in ((ax_m, "peak memory (MiB)"), (ax_t, "forward+backward (s)")):
        if any(len(ln.get_xdata()) for ln in ax.lines):  # log of nothing warns
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xlabel("batch size B" if axis == "batch" else "frames T (labels scaled alike)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    w = sweep["runs"][-1]["workload"]
    fig.suptitle(f"cutrans bench: {w['name']} V={w['vocab']} H={w['hidden']}, "
                 f"{sweep['runs'][-1]['dtype']}, {sweep['runs'][-1]['device']}"
                 " (hollow: estimate, did not fit)", fontsize=10)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
