"""End-to-end: smoke runs on tiny shapes, the JSON document, the does-not-fit path, plots."""
import json
import sys

import pytest

from cutrans.bench import cli
from cutrans.bench.methods import Method
from cutrans.bench.runner import Settings, run_benchmark
from cutrans.bench.workloads import custom_workload

TINY = ["--batch", "3", "--frames", "6", "--labels", "3", "--vocab", "8", "--hidden", "5",
        "--repeat", "2", "--warmup", "1", "--quiet", "--budgets", "2K", "sample"]


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    """One isolated (subprocess per method) run of every method on a tiny shape."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    assert cli.main(TINY + ["--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_schema(tiny_json):
    doc = tiny_json
    assert doc["schema"] == "cutrans-bench/1"
    env = doc["environment"]
    for k in ("date", "command", "device", "device_name", "cpu_model", "cpu_count", "python",
              "versions"):
        assert k in env
    assert env["device"] == "cpu" and env["versions"]["numpy"]
    assert env["command"].startswith("python -m cutrans bench --batch 3")
    (run,) = doc["runs"]
    w = run["workload"]
    assert (w["batch"], w["frames"], w["labels"], w["vocab"], w["hidden"]) == (3, 6, 3, 8, 5)
    assert w["padded_rows"] == 3 * 6 * 4 and len(w["enc_lengths"]) == 3
    keys = [r["method"] for r in run["results"]]
    assert keys == ["fused:2048", "fused:sample", "baseline", "cutrans-logits", "torchaudio",
                    "warprnnt"]
    for r in run["results"]:
        assert r["status"] in ("ok", "not-installed"), r
        assert r["estimate_bytes"] > 0 and r["needs_bytes"] >= r["estimate_bytes"]
        if r["status"] == "ok":
            assert len(r["times_s"]) >= 1 and r["time_median_s"] > 0
            assert r["peak_bytes"] >= 0 and r["agrees"] is True
            assert r["memory_probe"].startswith(("VmHWM", "ru_maxrss"))
    base = next(r for r in run["results"] if r["method"] == "baseline")
    assert base["memory_vs_baseline"] in (1, None) and base["time_vs_baseline"] == 1
    assert run["all_agree"] and run["reference"]["loss_from"] == "baseline"
    fused = run["results"][0]
    assert fused["chunk_rows"] >= 1 and fused["tracemalloc_peak_bytes"] is not None


def test_table_shows_agreement_and_ratios(capsys):
    argv = TINY + ["--no-isolate", "--methods", "fused", "baseline", "cutrans-logits"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "cutrans fused (2 KiB)" in out and "cutrans fused (sample-wise)" in out
    assert "torch batched (baseline)" in out and "warprnnt" not in out
    assert out.count("✓") == 4 and "all methods agree" in out and "1x" in out


def test_does_not_fit_is_reported_not_run(capsys, monkeypatch):
    import cutrans.bench.runner as runner

    def boom(*a, **k):
        raise AssertionError("a method that does not fit must not run")
    monkeypatch.setattr(runner, "_run_isolated", boom)
    assert cli.main(TINY + ["--memory-limit", "64K"]) == 0
    out = capsys.readouterr().out
    assert out.count("does not fit: needs ~") >= 4


def test_does_not_fit_only_the_batched_rows():
    w = custom_workload(2, 60, 20, 2000, 16)
    s = Settings(repeat=1, warmup=0, memory_limit=32 << 20, isolate=False, progress=False)
    run = run_benchmark(w, [Method("fused", 1 << 20), Method("baseline")], s)
    fused, base = run["results"]
    assert fused["status"] == "ok" and base["status"] == "does-not-fit"
    assert "does not fit: needs ~" in base["message"] and fused["memory_vs_baseline"] is None
    assert fused["agrees"] is True and run["reference"]["loss_from"] == "fused:1048576"


def test_a_mismatch_is_flagged(monkeypatch):
    import cutrans.bench.runner as runner

    real = runner.measure_method

    def skewed(spec):
        res = real(spec)
        if spec["method"]["family"] == "baseline":
            res["loss"] *= 1.01
        return res
    monkeypatch.setattr(runner, "measure_method", skewed)
    s = Settings(repeat=1, warmup=0, isolate=False, progress=False)
    run = run_benchmark(custom_workload(2, 5, 2, 6, 4), [Method("fused", 1 << 20),
                                                         Method("baseline")], s)
    assert run["all_agree"] is False and run["results"][0]["agrees"] is False


def test_plot(tmp_path, capsys):
    path = tmp_path / "sweep.png"
    argv = TINY + ["--no-isolate", "--methods", "fused", "baseline", "--plot", str(path),
                   "--sweep-points", "2", "--repeat", "1"]
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
