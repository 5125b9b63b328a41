"""Option parsing of ``python -m cutrans bench`` and what each option selects."""
import pytest

from cutrans.bench import cli
from cutrans.bench.measure import fmt_bytes, parse_bytes
from cutrans.bench.methods import FAMILIES, Method, build_methods, parse_budgets
from cutrans.bench.workloads import WORKLOADS


def resolve(*argv):
    return cli.resolve(cli.make_parser().parse_args(list(argv)))


def test_defaults_are_cpu_small_float32_all_methods():
    w, methods, s = resolve()
    assert w.name == "cpu-small" and w == WORKLOADS["cpu-small"]
    assert (s.device, s.dtype, s.repeat, s.warmup, s.isolate) == ("cpu", "float32", 3, 1, True)
    assert (s.check_samples, s.check_size, s.accuracy_only) == (4, 8 << 20, False)
    assert [m.key for m in methods] == ["fused:536870912", "fused:67108864", "fused:sample",
                                        "gemm-roof", "baseline", "cutrans-logits",
                                        "torchaudio", "warprnnt"]


def test_default_rows_per_device_and_dtype():
    _, methods, s = resolve("--device", "cuda")  # resolving needs no GPU
    keys = [m.key for m in methods]
    assert s.device == "cuda" and "fused:536870912:tf32" in keys
    assert keys.index("gemm-roof:tf32") == keys.index("gemm-roof") + 1
    assert "baseline-autocast" not in keys
    for dtype in ("bfloat16", "float16"):
        for dev in ("cpu", "cuda"):
            keys = [m.key for m in resolve("--device", dev, "--dtype", dtype)[1]]
            assert "baseline-autocast" in keys and not any("tf32" in k for k in keys)
    keys = [m.key for m in resolve("--device", "cuda", "--dtype", "float64")[1]]
    assert not any("tf32" in k or "autocast" in k for k in keys)
    _, methods, _ = resolve("--methods", "fused-tf32", "--budgets", "sample", "1M")
    assert [m.key for m in methods] == ["fused:sample:tf32"]
    assert Method.from_spec(methods[0].to_spec()) == methods[0]
    assert methods[0].label == "cutrans fused (sample-wise, tf32)"


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_selection(name):
    w, _, s = resolve("--workload", name)
    assert w == WORKLOADS[name] and s.repeat == w.repeat and s.warmup == w.warmup


def test_custom_shape_overrides_the_workload():
    w, _, _ = resolve("--batch", "3", "--frames", "7", "--labels", "2", "--vocab", "9",
                      "--hidden", "4")
    assert (w.name, w.batch, w.frames, w.labels, w.vocab, w.hidden) == ("custom", 3, 7, 2, 9, 4)
    w, _, _ = resolve("--workload", "librispeech-100", "--batch", "4")
    assert (w.name, w.batch, w.lengths, w.vocab) == ("custom", 4, "librispeech-100", 500)
    w, _, _ = resolve("--workload", "librispeech-100", "--frames", "50")
    assert w.lengths == "uniform"  # own lengths: the LibriSpeech table no longer applies


def test_budgets_and_method_filtering():
    _, methods, _ = resolve("--budgets", "1M,sample", "2G", "--methods", "fused,baseline")
    assert [m.key for m in methods] == [f"fused:{1 << 20}", "fused:sample", f"fused:{2 << 30}",
                                        "baseline"]
    _, methods, _ = resolve("--methods", "warprnnt", "cutrans-logits")
    assert [m.family for m in methods] == ["cutrans-logits", "warprnnt"]  # table order
    assert parse_budgets(["64M", " 8KiB ,sample-wise"]) == [64 << 20, 8 << 10, "sample"]
    assert build_methods(["sample"], ["fused"]) == [Method("fused", None, True)]


def test_other_options():
    _, _, s = resolve("--dtype", "float64", "--repeat", "5", "--warmup", "0", "--seed", "3",
                      "--memory-limit", "1.5G", "--no-isolate", "--quiet", "--max-seconds", "0")
    assert (s.dtype, s.repeat, s.warmup, s.seed) == ("float64", 5, 0, 3)
    assert (s.memory_limit, s.isolate, s.progress, s.max_seconds) == (
        int(1.5 * (1 << 30)), False, False, None)


@pytest.mark.parametrize("argv,msg", [
    (["--methods", "nope"], "unknown nope"),
    (["--budgets", "lots"], "expected a size"),
    (["--batch", "0"], "positive integer"),
    (["--workload", "huge"], "invalid choice"),
    (["--dtype", "int8"], "invalid choice"),
    (["--device", "tpu"], "invalid choice"),
    (["--methods", "fused-tf32", "--dtype", "bfloat16"], "TF32 applies to float32"),
    (["--methods", "baseline-autocast"], "needs --dtype bfloat16 or float16"),
    (["--check-samples", "-1"], "expected 0 or more"),
    (["--accuracy-only", "--check-samples", "0"], "needs --check-samples > 0"),
    (["--check-size", "x"], "expected a size"),
    (["--check-size", "0"], "--check-size: expected a positive size"),
    (["--budgets", "0"], "--budgets: expected a positive size"),
    (["--max-seconds", "-1"], "--max-seconds: expected 0 or more"),
    (["--warmup", "-3"], "--warmup: expected 0 or more"),
    (["--accuracy-only", "--plot", "p.png"], "--plot: plots timings and memory"),
    (["--json", "/nonexistent-folder/x.json"], "--json: folder /nonexistent-folder does not"),
    (["--json", "."], "--json: . is a folder"),
    (["--json", ""], "--json: empty file name"),
    (["--timeout", "0"], "expected a positive number"),
    (["--memory-limit", "0"], "expected a positive size"),
])
def test_bad_options_exit_2_with_a_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    pytest.importorskip("cupy")
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    with pytest.raises(SystemExit) as e:
        cli.main(["--device", "cuda"])
    assert e.value.code == 2 and "no usable CUDA device" in capsys.readouterr().err


def test_list_and_module_entry(capsys):
    from cutrans.__main__ import main

    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in WORKLOADS)
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_sizes():
    assert parse_bytes("1000") == 1000 and parse_bytes("2k") == 2048
    assert parse_bytes("0.5GiB") == 1 << 29
    assert fmt_bytes(3 << 20) == "3 MiB" and fmt_bytes(None) == "-"
    assert set(FAMILIES) == {"fused", "fused-tf32", "gemm-roof", "baseline", "baseline-autocast",
                             "cutrans-logits", "torchaudio", "warprnnt"}


def test_cuda_paths_without_a_gpu():
    """What the CUDA rows would run, checked without a device: precisions, chunking,
    estimates, dependencies, and the CuPy compute-type switch of the TF32 roof."""
    from cutrans.bench import steps
    from cutrans.bench.methods import estimate_bytes, missing_dependency
    from cutrans.bench.workloads import lattice_sizes

    assert steps.roof_precision("bfloat16", "cuda", False)[0] == "bfloat16"
    assert "float32 accumulation" in steps.roof_precision("float16", "cuda", False)[1]
    assert "TF32 tensor cores" in steps.roof_precision("float32", "cuda", True)[1]
    assert "TF32 off" in steps.roof_precision("float32", "cuda", False)[1]
    assert steps.roof_precision("bfloat16", "cpu", False)[0] == "float32"
    sizes = lattice_sizes(WORKLOADS["paper-headline"])
    rows = steps.roof_chunk_rows(sizes, "bfloat16", "cuda")
    assert rows * (2 * 512 + 1024) * 2 <= steps.ROOF_CHUNK_BYTES["cuda"]
    assert rows < sizes["packed_rows"]  # 206 M rows: several chunks
    est = estimate_bytes(Method("gemm-roof"), sizes, "bfloat16", "cuda")
    inputs = (1024 * 1000 * 512 + 1024 * 201 * 512 + 1024 * 512 + 1024) * (4 + 2)
    assert abs(est["total"] - inputs - (2 << 30)) < 16 << 20  # 2 GiB of row buffers
    auto = estimate_bytes(Method("baseline-autocast"), sizes, "bfloat16", "cuda")["call"]
    assert auto > estimate_bytes(Method("baseline"), sizes, "bfloat16", "cuda")["call"]
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        assert missing_dependency(Method("gemm-roof"), "cuda") == "not installed: cupy"
        return
    assert missing_dependency(Method("gemm-roof"), "cuda") is None
    from cupy._core import _routines_linalg as lin

    state = {"f": lin.COMPUTE_TYPE_DEFAULT}
    calls = []

    def set_ct(dtype, ct):
        calls.append(ct)
        state["f"] = ct
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(lin, "get_compute_type", lambda dtype: state["f"])
        mp.setattr(lin, "set_compute_type", set_ct)
        with steps._cupy_compute_type(True):
            assert state["f"] == lin.COMPUTE_TYPE_TF32
        with steps._cupy_compute_type(False):
            assert state["f"] == lin.COMPUTE_TYPE_DEFAULT
    finally:
        mp.undo()
    assert calls == [lin.COMPUTE_TYPE_TF32, lin.COMPUTE_TYPE_DEFAULT,
                     lin.COMPUTE_TYPE_DEFAULT, lin.COMPUTE_TYPE_DEFAULT]


def test_output_paths_that_can_be_written_pass(tmp_path):
    """An existing writable file (its folder need not be writable), a new file in a writable
    folder, /dev/null."""
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    for path in (str(existing), str(tmp_path / "new.json"), "/dev/null"):
        cli.check_output_path("--json", path)
