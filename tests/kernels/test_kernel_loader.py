"""The kernel loader: registry, source hash, options, caches, debug output, lazy imports."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cutrans import _kernels
from cutrans._dtypes import DTYPES
from cutrans._topology import Topology


def test_registry_matches_sources():
    names = []
    for spec in _kernels.KERNELS.values():
        text = _kernels.read_source(spec.source)
        assert re.search(rf"\b{spec.template}\s*\(", text), spec.template
        assert all(set(t) <= set(DTYPES) for t in spec.types)
        assert spec.blocks in (_kernels.BLOCKS, _kernels.ROW_TPR, (_kernels.JOINT_BACKWARD_BLOCK,))
        names += spec.names()
    # joint_grad_sums splits its block into whole groups of lanes
    assert all(_kernels.JOINT_BACKWARD_BLOCK % n == 0 for n in _kernels.JOINT_BACKWARD_LANES)
    assert len(names) == len(set(names))
    assert sorted(n for s in _kernels.sources() for n in _kernels.name_expressions(s)) == \
        sorted(names)
    assert "row_stats<__nv_bfloat16, 256, false>" in names
    assert "row_grad<float, 32, true>" in names
    assert "lattice_arcs<double, 32>" in names
    assert "lattice<double, 32>" in names
    assert "joint_backward_enc<__half, float, 256>" in names


def test_sources_include_compat_first():
    for src in _kernels.sources():
        text = _kernels.read_source(src)
        first = re.search(r'#include\s+"([^"]+)"', text).group(1)
        assert first == "common.cuh", src
    common = _kernels.read_source("common.cuh")
    assert re.search(r'#include\s+"([^"]+)"', common).group(1) == "cuda_compat.cuh"
    for name in _kernels.sources() + ["common.cuh"]:
        assert "INFINITY" not in _kernels.read_source(name).replace("// ", "")


def test_options_and_hash(tmp_path):
    opts = _kernels.compile_options()
    kdir = Path(_kernels.kernels_dir())
    assert (kdir / "common.cuh").is_file() and (kdir / "cuda_compat.cuh").is_file()
    assert f"-I{kdir}" in opts and "--std=c++17" in opts
    assert f"-DCUTRANS_SOURCE_HASH=0x{_kernels.source_hash()}" in opts
    # the hash covers headers: editing a .cuh changes it
    for f in kdir.iterdir():
        if f.suffix in (".cu", ".cuh"):
            shutil.copy(f, tmp_path / f.name)
    h0 = _kernels.folder_hash(tmp_path)
    assert h0 == _kernels.source_hash()
    with open(tmp_path / "common.cuh", "a") as f:
        f.write("\n// edited\n")
    assert _kernels.folder_hash(tmp_path) != h0


def test_pick_block():
    assert [_kernels.pick_block(w) for w in (1, 64, 65, 512, 513, 10**6)] == \
        [32, 32, 128, 128, 256, 256]


def test_lattice_block_gives_each_cell_of_the_longest_diagonal_a_thread():
    assert [_kernels.lattice_block(d) for d in (1, 32, 33, 128, 129, 256, 257, 10**4)] == \
        [32, 32, 128, 128, 256, 256, 256, 256]
    assert _kernels.KERNELS["lattice"].blocks == _kernels.BLOCKS  # each pick is compiled


def test_import_touches_no_device_and_no_cupy():
    # (a None entry is a blocked module: tests/numpy_only/sitecustomize.py)
    code = ("import sys, cutrans, cutrans._kernels, cutrans.backends.kernel_backend\n"
            "assert sys.modules.get('cupy') is None, 'cupy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


class _FakeModule:
    builds = 0

    def __init__(self):
        type(self).builds += 1

    def get_function(self, name):
        return object()


class _FakeProvider(_kernels._Provider):
    device = 0

    def _key(self):
        return self.device

    def _build(self, source):
        return _FakeModule()


def test_provider_caches_per_device_and_source():
    p = _FakeProvider()
    _FakeModule.builds = 0
    k1 = p.function("row_stats", "float32", 32, False)
    assert p.function("row_stats", "float32", 32, False) is k1
    assert p.function("row_stats", "float32", 32, True) is not k1
    p.function("row_grad", "float16", 128, True)  # same source: no new module
    assert _FakeModule.builds == 1
    p.function("lattice", "float64", 32)
    assert _FakeModule.builds == 2
    p.device = 1
    assert p.function("row_stats", "float32", 32, False) is not k1
    assert _FakeModule.builds == 3


def test_debug_prints_launches(monkeypatch, capfd, emu):
    monkeypatch.setenv("CUTRANS_KERNEL_DEBUG", "1")
    import cutrans
    z = np.zeros((1, 2, 2, 3), np.float32)
    cutrans.rnnt_loss(z, np.ones((1, 1), np.int32), np.array([2], np.int32),
                      np.array([1], np.int32), backend="emulated")
    err = capfd.readouterr().err
    # a warp per row, 8 rows per block of 256 threads: 4 rows take one block
    assert "cutrans[emulated] row_stats<float, 32, false> grid=(1,) block=(256,)" in err
    assert "cutrans[emulated] lattice<float, 32> grid=(1,) block=(32,)" in err


def test_emulated_backend_cached():
    from cutrans.backends.kernel_backend import emulated_backend
    assert emulated_backend() is emulated_backend()
    assert emulated_backend(order="reverse") is not emulated_backend()
    with pytest.raises(ValueError):
        from cutrans.backends import get_backend
        get_backend("nope")


def test_row_limit_is_checked(emu):
    from cutrans._plan import DevicePlan
    big = DevicePlan(offsets=None, frame_offsets=None, label_offsets=None, logit_len=None,
                     target_len=None, targets=None, batch=1, rows=2**31)
    with pytest.raises(ValueError, match="at most 2147483647 lattice rows"):
        emu.lattice(big, Topology(), 0, 1, 0, None, None, None, None, None, True)
