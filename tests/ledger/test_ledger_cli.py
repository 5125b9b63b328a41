"""``python -m cutrans ledger``: every figure says modelled; JSON output."""
import json

from cutrans.__main__ import main
from optional_deps import needs


@needs("ml_dtypes")  # bfloat16
def test_one_configuration(tmp_path, capsys):
    out = tmp_path / "l.json"
    assert main(["ledger", "--workload", "librispeech-profiled", "--dtype", "bfloat16",
                 "--launches", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "never replaces a measurement" in text
    for line in text.splitlines():
        if " ms" in line or " GB" in line or " us " in line:
            assert "modelled" in line, line
    doc = json.loads(out.read_text())
    ev = doc["evaluation"]
    assert ev["config"]["dtype"] == "bfloat16" and ev["modelled_ms"] > ev["roof_ms"] > 0
    # wall = GPU time + a measured host cost per launch (27 us on an H100)
    assert abs(ev["wall_ms"] - (ev["modelled_ms"] + ev["launches"] * 27e-3)) < 1e-6
    assert "wall (modelled)" in text and ev["launches"] > 10
    # where each GEMM rate comes from (librispeech-profiled: V=500 padded, aligned)
    assert "GEMM rate used by the model, bfloat16->bfloat16, aligned: 611 TFLOP/s" in text
    assert "assumed for other aligned shapes" in text
    assert "never replaces a measurement" in doc["caveat"]


def test_validate_only(capsys):
    assert main(["ledger", "--validate"]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "profiled ms (measured)" in text


@needs("ml_dtypes")  # bfloat16
def test_pipelined_configuration(capsys):
    assert main(["ledger", "--workload", "librispeech-100", "--dtype", "bfloat16",
                 "--pipeline"]) == 0
    text = capsys.readouterr().out
    total = [ln for ln in text.splitlines() if ln.startswith("total:")]
    assert len(total) == 1 and "modelled" in total[0]
    assert "pipelined: the side stream's lattices overlapped" in total[0]


import pytest  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--workload", "cpu-small", "--budget", "0"], "--budget: expected a positive size"),
    (["--workload", "cpu-small", "--budget", "1K"], "max_workspace_bytes=1024 is too small"),
    (["--dtype", "bfloat16"], "--dtype: describe one configuration; add --workload"),
    (["--validate", "--workload", "cpu-small"], "--validate: runs the validation gate only"),
    (["--workload", "cpu-small", "--allow-tf32", "--dtype", "float16"], "--allow-tf32: float32"),
    (["--workload", "cpu-small", "--path", "two-pass", "--pipeline"], "--pipeline: the one-pass"),
    (["--workload", "cpu-small", "--path", "logits", "--sample-wise"], "--path logits"),
    (["--workload", "cpu-small", "--launches", "-3"], "--launches: expected 0 or more"),
    (["--workload", "cpu-small", "--json", "/nonexistent-folder/l.json"], "--json: folder"),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["ledger", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_failing_gate_exits_1(monkeypatch, capsys):
    from cutrans.ledger import replay
    monkeypatch.setattr(replay, "gate_passes", lambda rows: False)
    assert main(["ledger", "--validate"]) == 1
    assert "FAIL" in capsys.readouterr().out
