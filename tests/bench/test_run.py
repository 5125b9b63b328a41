"""End-to-end: smoke runs on tiny shapes, the JSON document, the accuracy check and its
verdict, the roof and half-precision rows, the does-not-fit path, unavailable libraries,
plots."""
import importlib.abc
import importlib.util
import json
import sys

import pytest

from cutrans.bench import cli, steps
from cutrans.bench.methods import Method
from cutrans.bench.runner import Settings, run_benchmark
from cutrans.bench.workloads import custom_workload
from optional_deps import dtype_params, needs

TINY = ["--batch", "3", "--frames", "6", "--labels", "3", "--vocab", "8", "--hidden", "5",
        "--repeat", "2", "--warmup", "1", "--quiet", "--budgets", "2K", "sample"]
JOINT_Q = {"loss", "enc", "pred", "weight", "bias"}


def has(mod):
    return importlib.util.find_spec(mod) is not None


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    """One isolated (subprocess per method) run of every default method on a tiny shape."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    assert cli.main(TINY + ["--json", str(path)]) == 0
    return json.loads(path.read_text())


@needs("torch")  # the batched baseline rows
def test_json_schema(tiny_json):
    doc = tiny_json
    assert doc["schema"] == "cutrans-bench/2"
    env = doc["environment"]
    for k in ("date", "command", "device", "device_name", "cpu_model", "cpu_count", "python",
              "versions"):
        assert k in env
    assert env["device"] == "cpu" and env["versions"]["numpy"]
    assert env["command"].startswith("python -m cutrans bench --batch 3")
    assert doc["settings"]["check_samples"] == 4 and doc["settings"]["accuracy_only"] is False
    (run,) = doc["runs"]
    w = run["workload"]
    assert (w["batch"], w["frames"], w["labels"], w["vocab"], w["hidden"]) == (3, 6, 3, 8, 5)
    assert w["padded_rows"] == 3 * 6 * 4 and len(w["enc_lengths"]) == 3
    keys = [r["method"] for r in run["results"]]
    assert keys == ["fused:2048", "fused:sample", "gemm-roof", "baseline", "cutrans-logits",
                    "torchaudio", "warprnnt"]
    for r in run["results"]:
        assert r["status"] in ("ok", "not-installed", "unavailable"), r
        assert r["estimate_bytes"] > 0 and r["needs_bytes"] >= r["estimate_bytes"]
        if r["status"] != "ok":
            continue
        assert len(r["times_s"]) >= 1 and r["time_median_s"] > 0
        assert r["peak_bytes"] >= 0 and r["total_peak_bytes"] > 0 and r["precision"]
        assert r["memory_probe"].startswith(("VmHWM", "ru_maxrss"))
        if r["kind"] == "gemm":
            assert r["agrees"] is None and r["loss"] is None and "accuracy" not in r
            continue
        assert r["agrees"] is True, r
        want = JOINT_Q | ({"logits"} if r["family"] == "baseline" else set()) \
            if r["kind"] == "joint" else {"loss", "logits"}
        assert set(r["accuracy"]) == want, r
        assert set(r["accuracy_allowed"]) == want and set(r["error_vs_baseline"]) == want
        assert all(e < 1e-3 for e in r["accuracy"].values())
    rows = {r["method"]: r for r in run["results"]}
    base, fused, roof = rows["baseline"], rows["fused:2048"], rows["gemm-roof"]
    assert base["time_vs_baseline"] == 1 and run["ratio_baseline"] == "baseline"
    assert base["error_vs_baseline"]["enc"] == 1.0
    assert fused["time_vs_roof"] == pytest.approx(fused["time_median_s"] / roof["time_median_s"])
    assert fused["chunk_rows"] >= 1 and fused["tracemalloc_peak_bytes"] is not None
    assert "float32" in roof["precision"] and base["time_vs_roof"] is None
    assert roof["memory_vs_baseline"] is None and roof["total_vs_baseline"] is None  # set-up
    assert run["failed"] == [] and run["cutrans_measured"]
    assert run["all_agree"] and run["reference"]["loss_from"] == "baseline"
    c = run["check"]
    assert (c["samples"], c["rows"], c["lengths_scaled"]) == (3, w["packed_rows"], False)
    assert c["baselines"]["baseline"]["from"] == "its row"
    assert c["rule"]["k"] == 4 and c["rule"]["floor_grad"] > 0 and c["reference_loss"] > 0
    assert c["rule"]["cap_grad"] == 8 * c["rule"]["floor_grad"]


@needs("torch")  # the batched baseline rows
def test_tables_show_roof_agreement_and_errors(capsys):
    argv = TINY + ["--no-isolate", "--methods", "fused", "gemm-roof", "baseline",
                   "cutrans-logits"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "cutrans fused (2 KiB)" in out and "cutrans fused (sample-wise)" in out
    assert "3 GEMMs alone (roof)" in out and "total peak" in out and "time/roof" in out
    assert "torch batched (baseline)" in out and "warprnnt" not in out
    assert "accuracy check: the first 3 samples" in out and "d_logits" in out
    assert out.count("✓") == 8 and "all methods agree" in out and "1x" in out
    assert "rule (float32)" in out


def _skew_fused_weight(monkeypatch, factor, family="fused"):
    real = steps.prepare

    def skewed(method, *a, **k):
        p = real(method, *a, **k)
        if method.family == family:
            fetch = p.fetch

            def fetch2(out):
                got = fetch(out)
                got["weight"] = got["weight"] * factor
                return got
            p.fetch = fetch2
        return p
    monkeypatch.setattr(steps, "prepare", skewed)


@needs("torch")  # the batched baseline rows
def test_a_less_exact_method_is_flagged(monkeypatch, capsys):
    _skew_fused_weight(monkeypatch, 1.01)
    assert cli.main(TINY + ["--no-isolate", "--methods", "fused", "baseline"]) == 1
    out = capsys.readouterr().out
    flagged = [ln for ln in out.splitlines() if ln.rstrip().endswith("✗")]
    assert "MISMATCH" in out and len(flagged) == 4  # 2 fused rows x (table + accuracy)
    assert all(ln.startswith("cutrans fused") for ln in flagged)
    s = Settings(repeat=1, warmup=0, isolate=False, progress=False)
    run = run_benchmark(custom_workload(2, 5, 2, 6, 4), [Method("fused", 1 << 20),
                                                         Method("baseline")], s)
    fused, base = run["results"]
    assert run["all_agree"] is False and fused["agrees"] is False and base["agrees"] is True
    assert fused["accuracy"]["weight"] > fused["accuracy_allowed"]["weight"]
    assert fused["accuracy"]["enc"] <= fused["accuracy_allowed"]["enc"]


@needs("torch")  # the batched baseline rows
def test_a_less_exact_third_party_row_is_shown_but_does_not_fail(monkeypatch, capsys):
    _skew_fused_weight(monkeypatch, 1.01, family="baseline")
    assert cli.main(TINY + ["--no-isolate", "--methods", "fused", "baseline"]) == 0
    out = capsys.readouterr().out
    flagged = [ln for ln in out.splitlines() if ln.rstrip().endswith("✗")]
    assert flagged and all(ln.startswith("torch batched") for ln in flagged)
    assert "cutrans agrees; a third-party method is less exact" in out
    assert "MISMATCH" not in out


@needs("torch")  # the batched baseline rows
def test_a_method_as_exact_as_the_floor_passes(monkeypatch):
    from cutrans.bench import accuracy

    w = custom_workload(2, 5, 2, 6, 4)
    _, floor = accuracy.floors("float32", 1.0)  # the slice's loss is ~10: floor >= this
    _skew_fused_weight(monkeypatch, 1 + 0.5 * floor)
    s = Settings(repeat=1, warmup=0, isolate=False, progress=False)
    run = run_benchmark(w, [Method("fused", 1 << 20), Method("baseline")], s)
    assert run["check"]["rule"]["floor_grad"] >= floor
    assert run["all_agree"] and run["results"][0]["error_vs_baseline"]["weight"] > 4


@needs("torch")  # the batched baseline rows
def test_does_not_fit_is_reported_not_run(capsys, monkeypatch):
    import cutrans.bench.runner as runner

    real = runner._measure

    def only_slices(spec, settings):
        assert spec.get("accuracy_only"), "a method that does not fit must not run"
        return real(spec, settings)
    monkeypatch.setattr(runner, "_measure", only_slices)
    # nothing of cutrans measured: said, and exit 1 (the run answers nothing)
    assert cli.main(TINY + ["--memory-limit", "64K", "--no-isolate"]) == 1
    out = capsys.readouterr().out
    assert out.count("does not fit: needs ~") >= 4 and "torch batched (slice only)" in out
    assert "no cutrans row was measured" in out and "all methods agree" not in out
    assert "nothing was measured" in out  # not even the baselines (slice only)


@needs("torch")  # the batched baseline rows
def test_does_not_fit_only_the_batched_rows():
    w = custom_workload(2, 60, 20, 2000, 16)
    s = Settings(repeat=1, warmup=0, memory_limit=32 << 20, isolate=False, progress=False,
                 check_size=1 << 16)
    run = run_benchmark(w, [Method("fused", 1 << 20), Method("baseline")], s)
    fused, base = run["results"]
    assert fused["status"] == "ok" and base["status"] == "does-not-fit"
    assert "does not fit: needs ~" in base["message"] and fused["memory_vs_baseline"] is None
    assert fused["agrees"] is True and run["reference"]["loss_from"] == "fused:1048576"
    # the baseline's error still comes from the (small) slice
    assert run["check"]["baselines"]["baseline"]["from"] == "a slice-only run"
    assert run["check"]["lengths_scaled"] and fused["error_vs_baseline"]["enc"] is not None


@needs("torch")  # the batched and autocast baseline rows
@pytest.mark.parametrize("dtype", dtype_params("bfloat16", "float16"))
def test_half_precision_rows_on_the_cpu(dtype, capsys, tmp_path):
    path = tmp_path / "half.json"
    argv = TINY + ["--no-isolate", "--dtype", dtype, "--methods", "fused", "gemm-roof",
                   "baseline", "baseline-autocast", "cutrans-logits", "--json", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "torch batched, autocast" in out and f"rule ({dtype})" in out
    assert "ratios (mem/base, time/base) vs baseline-autocast" in out
    (run,) = json.loads(path.read_text())["runs"]
    rows = {r["method"]: r for r in run["results"]}
    assert all(r["status"] == "ok" and r["agrees"] is not False for r in rows.values())
    assert "autocast" in rows["baseline-autocast"]["precision"]
    assert rows["baseline-autocast"]["time_vs_baseline"] == 1
    assert f"{dtype} inputs" == rows["fused:2048"]["precision"]
    assert "float32 NumPy" in rows["gemm-roof"]["precision"]  # the NumPy compute dtype
    assert set(run["check"]["baselines"]) == {"baseline", "baseline-autocast"}


def test_tf32_rows_on_the_cpu_are_marked(capsys):
    argv = TINY + ["--no-isolate", "--methods", "fused", "fused-tf32", "gemm-roof",
                   "--budgets", "2K"]
    s = Settings(repeat=1, warmup=0, isolate=False, progress=False)
    run = run_benchmark(custom_workload(2, 5, 2, 6, 4),
                        [Method("fused", 2048, tf32=True), Method("gemm-roof"),
                         Method("gemm-roof", tf32=True)], s)
    fused, roof, roof32 = run["results"]
    assert fused["method"] == "fused:2048:tf32" and "emulates TF32 rounding" in fused["note"]
    assert "TF32 GEMMs allowed" in fused["precision"]
    assert fused["time_vs_roof"] == pytest.approx(fused["time_median_s"] /
                                                  roof32["time_median_s"])
    assert "no TF32 on the CPU" in roof32["precision"] and fused["agrees"] is True
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "cutrans fused (2 KiB, tf32)" in out and "3 GEMMs alone (roof, tf32)" in out


@needs("torch")  # the batched baseline rows
def test_accuracy_only_and_no_check(capsys):
    assert cli.main(TINY + ["--no-isolate", "--methods", "fused", "baseline",
                            "--accuracy-only"]) == 0
    out = capsys.readouterr().out
    assert "fwd+bwd" not in out and "accuracy check" in out and out.count("✓") == 3
    assert cli.main(TINY + ["--no-isolate", "--methods", "fused", "baseline",
                            "--check-samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "no accuracy check" in out and "✓" not in out and "check: the first" not in out


class _RowStackFinder(importlib.abc.MetaPathFinder):
    """Imports of warprnnt_numba fail as on NumPy >= 2.5 with an older Numba."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith("warprnnt_numba."):  # the package itself is found (installed)
            raise AttributeError("module 'numpy' has no attribute 'row_stack'")
        return None


def test_warprnnt_that_cannot_run_is_reported_and_the_table_kept(monkeypatch, capsys):
    if not (has("torch") and has("warprnnt_numba")):
        pytest.skip("needs torch and warprnnt-numba installed")
    for name in [m for m in sys.modules if m.split(".")[0] == "warprnnt_numba"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_RowStackFinder()] + sys.meta_path)
    assert cli.main(TINY + ["--no-isolate", "--methods", "fused", "warprnnt"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("warprnnt-numba (logits)"))
    assert "does not run here" in line and "row_stack" in line and "NumPy < 2.5" in line
    assert "all methods agree" in out and out.count("✓") == 4


def test_a_row_stack_failure_at_call_time_is_unavailable(monkeypatch):
    from cutrans.bench import worker

    def boom(spec):
        raise TypeError("Failed in nopython mode pipeline: Unknown attribute 'row_stack'")
    monkeypatch.setattr(worker, "measure_method", boom)
    spec = {"method": Method("warprnnt").to_spec()}
    res = worker.run_spec(spec)
    assert res["status"] == "unavailable" and "NumPy < 2.5" in res["message"]
    spec = {"method": Method("fused", 1024).to_spec()}
    assert worker.run_spec(spec)["status"] == "error"


def test_plot(tmp_path, capsys):
    path = tmp_path / "sweep.png"
    argv = TINY + ["--no-isolate", "--methods", "fused", "baseline", "--plot", str(path),
                   "--sweep-points", "2", "--repeat", "1", "--check-samples", "0"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and "needs matplotlib" in capsys.readouterr().err
        return
    assert cli.main(argv + ["--sweep", "frames"]) == 0
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(SystemExit) as e:
        cli.main(TINY + ["--plot", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install 'cutrans[plot]'" in err
    assert not (tmp_path / "x.png").exists()


def test_failed_rows_are_named_in_the_verdict_and_fail_the_run(monkeypatch, capsys, tmp_path):
    """An error or timeout row is not 'agreeing': the summary names it, the exit is 1."""
    import cutrans.bench.runner as runner

    real = runner._measure

    def broken(spec, settings):
        if Method.from_spec(spec["method"]).key == "fused:sample":
            return {"status": "error", "message": "RuntimeError: boom"}
        return real(spec, settings)
    monkeypatch.setattr(runner, "_measure", broken)
    out_json = tmp_path / "r.json"
    assert cli.main(TINY + ["--no-isolate", "--methods", "fused", "--json",
                            str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: cutrans fused (sample-wise)" in out and "all methods agree" not in out
    (run,) = json.loads(out_json.read_text())["runs"]
    assert run["failed"] == ["cutrans fused (sample-wise)"] and run["cutrans_measured"]


def test_no_check_reason_when_no_row_computes_a_loss(capsys):
    assert cli.main(TINY + ["--no-isolate", "--methods", "gemm-roof"]) == 0
    assert "no accuracy check: no row computes a loss" in capsys.readouterr().out
