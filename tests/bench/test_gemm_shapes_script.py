"""scripts/gemm_shapes.py (a GPU measurement) runs on the CPU: its layouts compute the same
products, and its check of that can fail."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gemm_shapes.py"


def load():
    spec = importlib.util.spec_from_file_location("gemm_shapes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
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
        bias_apart = mod.LAYOUTS[name][2] == "H"
        assert len(row["ms"]) == (4 if bias_apart else 3), name  # + the db GEMV
        assert row["sum_ms"] > 0
    assert "| Vp, K=Hp (now) |" in capsys.readouterr().out
    assert (tmp_path / "r.json").stat().st_size > 0


def test_layout_widths():
    """The layouts' arrays: V's extent, its leading dimension and K as each name says."""
    mod = load()
    rng = np.random.default_rng(0)
    shapes = {}
    for name in mod.LAYOUTS:
        h, w, z, d_w = mod.layout_arrays(np, 10, 16, 13, np.float32, name, rng)
        shapes[name] = (z.shape[1], z.strides[0] // 4, h.shape[1])
        assert not w[13:].any() and d_w.shape == (z.shape[1], h.shape[1])
    assert shapes == {"V, ld Vp, K=Hp (runs C/D)": (13, 16, 24),
                      "Vp, K=Hp (now)": (16, 16, 24),
                      "Vp, K=H (bias apart)": (16, 16, 16),
                      "V, ld V, K=H (roof of runs C/D)": (13, 13, 16)}


def test_check_fails_on_a_different_product():
    mod = load()
    a = [np.ones((3, 4)), np.ones((4, 2)), np.ones((3, 2))]
    b = [x.copy() for x in a]
    b[1][0, 0] = 1.5
    mod.check_same_products({"x": ([1.0], a), "y": ([1.0], a)}, "float32")
    with pytest.raises(AssertionError, match="y: dW differs"):
        mod.check_same_products({"x": ([1.0], a), "y": ([1.0], b)}, "float32")
