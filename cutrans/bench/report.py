"""Output: the stdout table, the ``--json`` document and the ``--plot`` figure."""
from __future__ import annotations

import json

from .measure import fmt_bytes

JSON_SCHEMA = "cutrans-bench/1"
CHECK = {True: "✓", False: "✗", None: ""}


def _fmt_time(s):
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.3g}x"


def format_table(run: dict, env: dict | None = None) -> str:
    """A fixed-width table of one run, with a header naming shapes, dtype and device."""
    w = run["workload"]
    lines = []
    where = run["device"] + (f" ({env['device_name']}, {env['cpu_count']} CPUs)" if env else "")
    lines.append(f"workload {w['name']}: B={w['batch']} T={w['frames']} U={w['labels']} "
                 f"V={w['vocab']} H={w['hidden']} ({w['lengths']} lengths), {run['dtype']}, "
                 f"{where}")
    lines.append(f"lattice rows: padded B*T*(U+1) = {w['padded_rows']:,}; packed "
                 f"sum T_b*(U_b+1) = {w['packed_rows']:,}")
    mem_head = "peak RSS Δ" if run["device"] == "cpu" else "peak alloc"
    head = (f"{'method':<30} {mem_head:>11} {'tracemalloc':>11} {'estimate':>10} "
            f"{'fwd+bwd':>10} {'mem/base':>9} {'time/base':>9} {'loss':>12}  ok")
    lines += [head, "-" * len(head)]
    for r in run["results"]:
        if r["status"] != "ok":
            msg = r.get("message", r["status"])
            if r["status"] == "does-not-fit":
                msg = f"does not fit: needs ~{r['needs_bytes'] / 1e9:.3g} GB"
            lines.append(f"{r['label']:<30} {msg}")
            continue
        lines.append(
            f"{r['label']:<30} {fmt_bytes(r['peak_bytes']):>11} "
            f"{fmt_bytes(r.get('tracemalloc_peak_bytes')):>11} "
            f"{fmt_bytes(r['estimate_bytes']):>10} {_fmt_time(r.get('time_median_s')):>10} "
            f"{_fmt_ratio(r.get('memory_vs_baseline')):>9} "
            f"{_fmt_ratio(r.get('time_vs_baseline')):>9} {r['loss']:>12.6g}  "
            f"{CHECK[r.get('agrees')]}")
    ref = run["reference"]
    check = ("all methods agree" if run["all_agree"] else "MISMATCH between methods") + \
        (f" (loss and gradient norm within rel. {ref['tolerance']:g} of {ref['loss_from']})"
         if ref.get("loss_from") else "")
    lines.append(check)
    return "\n".join(lines)


NOTES = """\
peak RSS Δ: peak resident memory above the RSS before the timed calls, each method in a fresh
  process (peak alloc on GPU: allocator peak). tracemalloc: NumPy/Python allocations only.
estimate: the call's peak predicted from shapes before running (with set-up arrays it is
  the does-not-fit check). fwd+bwd: median wall time of the timed calls (repeat, or fewer
  once --max-seconds is used up); ratios vs the batched baseline of this run.
(logits) rows: loss on precomputed padded logits only; the joint network is not included."""


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
