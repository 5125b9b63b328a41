"""scripts/gemm_shapes.py (a GPU measurement) runs on the CPU: its layouts compute the same
products, and its check of that can fail."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gemm_shapes.py"


def load():
    spec = importlib.util.spec_from_file_location("gemm_shapes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layouts_compute_the_same_products(dtype, tmp_path, capsys):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    mod = load()
    report = mod.main(["--device", "cpu", "--rows", "40", "--hidden", "16", "--vocab", "13",
                       "--reps", "1", "--dtype", dtype, "--json", str(tmp_path / "r.json")])
    assert list(report["layouts"]) == list(mod.LAYOUTS)
    for name, row in report["layouts"].items():
        assert len(row["ms"]) == (4 if mod.LAYOUTS[name].gemv else 3), name  # + db GEMV
        assert row["sum_ms"] > 0
    assert "| Vp, K=Hp (now) |" in capsys.readouterr().out
    assert (tmp_path / "r.json").stat().st_size > 0


def test_default_rows_are_the_schedules_largest_chunk():
    """The one-pass schedule's chunk (whole samples: below the budget's upper bound)."""
    from cutrans.bench.methods import Method, fused_chunk
    from cutrans.bench.workloads import WORKLOADS, lattice_sizes

    mod = load()
    sizes = lattice_sizes(WORKLOADS["librispeech-100"])
    for dtype in ("float32", "float16"):
        rows = mod.default_rows(dtype)
        assert 0 < rows <= fused_chunk(sizes, Method("fused", budget=512 << 20), dtype)[0]
        assert rows >= sizes["max_sample_rows"]


def test_layout_widths():
    """The layouts' buffers: V's extent and leading dimension, h's width (with or without
    the bias column), dh over h's first H columns (roof: its own array)."""
    mod = load()
    h_rand, w_rand = mod.random_inputs(10, 16, 13)
    shapes = {}
    for name, lay in mod.LAYOUTS.items():
        b = mod.layout_buffers(np, h_rand, w_rand, np.float32, lay)
        shapes[name] = (b.z.shape[1], b.z.strides[0] // 4, b.h.shape[1])
        assert not b.w[13:].any() and b.d_w.shape == (b.z.shape[1], b.h.shape[1])
        assert np.shares_memory(b.dh, b.h) != lay.roof
        assert (b.ones is not None) == lay.gemv
    assert shapes == {"V, ld Vp, K=Hp (runs C/D)": (13, 16, 24),
                      "Vp, K=Hp (now)": (16, 16, 24),
                      "Vp, K=Hp, GEMM 2 on H + db GEMV": (16, 16, 24),
                      "Vp, K=H, db GEMV (bias apart)": (16, 16, 16),
                      "V, ld V, K=H (roof of runs C/D)": (13, 13, 16)}


def _result(**kw):
    z = np.ones((3, 4))
    r = {"z": z, "dW": np.ones((4, 2)), "dh": np.ones((3, 2)), "db": z.sum(0),
         "z_pad": np.zeros((3, 4)), "dW_pad": np.zeros((4, 2)), "z_colsum": z.sum(0)}
    r.update(kw)
    return [1.0], r


@pytest.mark.parametrize("bad, match", [
    (dict(dW=np.full((4, 2), 1.5)), "y: dW differs"),
    (dict(db=np.zeros(4)), "y: db differs from x's db"),
    (dict(db=np.zeros(4), z_colsum=np.zeros(4)), "y: db differs from x's db"),
    (dict(z_pad=np.eye(3, 4)), "y: the padding"),
])
def test_check_fails_on_a_wrong_result(bad, match):
    mod = load()
    mod.check_results({"x": _result(), "y": _result()}, "float32")
    with pytest.raises(AssertionError, match=match):
        mod.check_results({"x": _result(), "y": _result(**bad)}, "float32")


def test_check_fails_on_a_bias_gradient_that_is_not_the_column_sum():
    mod = load()
    with pytest.raises(AssertionError, match="x: db differs from z's column sum"):
        mod.check_results({"x": _result(db=np.zeros(4))}, "float32")
