"""The wheel ships kernels/, emulation header and interop; import needs only NumPy."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_without_cupy_torch_jax_and_no_gpu_touch():
    code = (
        "import sys\n"
        "for m in ('cupy', 'torch', 'jax', 'jaxlib'): sys.modules[m] = None\n"
        "import numpy as np, cutrans, cutrans.interop, cutrans.kernels\n"
        "l = cutrans.rnnt_loss(np.zeros((1, 2, 2, 3)), np.array([[1]]), np.array([2]), np.array([1]))\n"
        "print(float(l))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert abs(float(out.stdout) - (-np.log(2 / 27))) < 1e-12


@pytest.mark.slow
def test_wheel_contains_and_loads_kernels(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), ROOT], check=True, capture_output=True)
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert any(n.startswith("cutrans/kernels/") and n.endswith(".cu") for n in names), names
    assert "cutrans/interop/__init__.py" in names
    assert "cutrans/emulation/cuda_emu.h" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(tmp_path / wheel)], check=True, capture_output=True)
    numpy_site = os.path.dirname(os.path.dirname(np.__file__))
    code = ("import cutrans, importlib.resources as r\n"
            "print(cutrans.__file__)\n"
            "print(sorted(p.name for p in r.files('cutrans.kernels').iterdir()))\n")
    # -S: no site, hence no editable-install finder; only the wheel and NumPy are visible
    env = dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{numpy_site}")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=tmp_path).stdout
    assert str(target) in out.splitlines()[0]
    assert ".cu" in out.splitlines()[1]
