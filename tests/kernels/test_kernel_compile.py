"""Every instantiation of every kernel compiles with NVRTC (as cupy.RawModule would) for every
architecture this NVRTC accepts, to cubin and PTX; declared resource limits hold on
sm_80/sm_90. No GPU needed."""
import pytest

from cutrans import _kernels

cc = pytest.importorskip("cutrans.compile_check")
try:
    ARCHS = cc.nvrtc_archs()
except RuntimeError as e:  # no CuPy / NVRTC in this environment
    pytest.skip(f"NVRTC unavailable: {e}", allow_module_level=True)


def _compile(source, arch, method):
    return cc.compile_source(_kernels.read_source(source), _kernels.name_expressions(source),
                             arch=arch, method=method, options=_kernels.compile_options(),
                             filename=source)


def test_archs():
    assert {"sm_80", "sm_90"} <= set(ARCHS)


@pytest.mark.parametrize("method", ["cubin", "ptx"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", _kernels.sources())
def test_compiles(source, arch, method):
    binary = _compile(source, arch, method)
    assert len(binary) > 0
    if method == "ptx":
        text = binary.decode(errors="replace")
        for spec in _kernels.KERNELS.values():
            if spec.source == source:
                assert f"{spec.template}I" in text, spec.template  # mangled entry names


@pytest.mark.parametrize("arch", [a for a in ("sm_80", "sm_90") if a in ARCHS])
@pytest.mark.parametrize("source", _kernels.sources())
def test_resource_limits(source, arch):
    usage = cc.resource_usage(_kernels.read_source(source), _kernels.name_expressions(source),
                              arch, options=_kernels.compile_options(), filename=source)
    names = set(_kernels.name_expressions(source))
    assert names <= set(usage), names - set(usage)
    for spec in _kernels.KERNELS.values():
        if spec.source == source:
            cc.check_limits({n: usage[n] for n in spec.names()},
                            max_registers=spec.max_registers,
                            max_shared=spec.max_shared_bytes, allow_spills=False)
