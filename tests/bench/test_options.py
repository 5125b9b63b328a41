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
    assert [m.key for m in methods] == ["fused:67108864", "fused:8388608", "fused:sample",
                                        "baseline", "cutrans-logits", "torchaudio", "warprnnt"]


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
    assert set(FAMILIES) == {"fused", "baseline", "cutrans-logits", "torchaudio", "warprnnt"}
