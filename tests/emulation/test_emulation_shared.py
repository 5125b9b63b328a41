"""Static ``__shared__`` storage: which ranges are recorded, that they are poisoned before every
block, and that the launcher refuses ranges outside the module's writable load segments."""
from __future__ import annotations

import pytest

from emu_support import (KERNELS, assert_ranges_writable, check_poison_kinds, library_owners,
                         names, source)
from cutrans.emulation import EmulatedModule, EmulationError, _build
from cutrans.emulation._elf import Elf
from cutrans.emulation._static_shared import SharedRange


@pytest.mark.parametrize("mode", ["fiber", "thread"])
def test_every_kind_of_static_shared_is_poisoned(emu, mode):
    mod = emu("shared_kinds.cu", mode)
    kinds = [r.name for r in mod.shared_ranges]
    assert "cutrans_shared" in kinds and len(kinds) == 5, kinds  # + kernel and helper, 2 instantiations
    assert sum("E8s_kernel" in k for k in kinds) == 2 and sum("E8s_helper" in k for k in kinds) == 2, kinds
    check_poison_kinds(mod)


def test_recorded_ranges_are_writable_and_not_tls(emu):
    from cutrans import _kernels
    provider = _kernels.EmulatedProvider()
    for source_name in _kernels.sources():
        assert_ranges_writable(provider._build(source_name), library_owners())
    assert_ranges_writable(emu("shared_kinds.cu"), ("poison_kinds", "template_helper"))
    assert_ranges_writable(emu("misc.cu"), ("read_uninit",))
    assert [r.name for r in emu("reduce.cu").shared_ranges] == ["cutrans_shared"]
    assert emu("wavefront.cu").shared_ranges == ()  # dynamic shared memory only


def _doctored_cases(lib: Elf) -> dict[str, tuple[int, int]]:
    """Ranges that must be refused: offset -> size."""
    sec = {s.name: s for s in lib.sections}
    relro = next(sec[n] for n in (".data.rel.ro", ".init_array", ".got") if n in sec)
    bss = sec[".bss"]
    return {
        "tls_offset": (0x50, 16),                  # a TLS symbol's value: lands in the ELF header
        "text": (sec[".text"].addr, 16),
        "relro": (relro.addr, 8),                  # a writable section, read-only after relocation
        "tls_image": (sec[".tbss"].addr, 8),
        "past_segment": (bss.addr + bss.size - 8, 64),
        "wraps": (2**64 - 8, 16),
    }


def test_ranges_outside_writable_segments_are_refused(emu, monkeypatch):
    good = emu("shared_kinds.cu")
    real_build = _build.build
    for name, (off, size) in _doctored_cases(Elf(good.path)).items():
        bad = SharedRange(off, size, f"doctored_{name}")
        monkeypatch.setattr(_build, "build", lambda *a, bad=bad, **k: real_build(*a, **k)._replace(
            ranges=[*real_build(*a, **k).ranges, bad]))
        with pytest.raises(EmulationError, match=rf"static __shared__ storage doctored_{name} \(offset "
                                                 rf"0x{off:x}, {size} bytes\) is not inside a writable load "
                                                 rf"segment.*refusing to poison it.*CXX="):
            EmulatedModule(source("shared_kinds.cu"), names("shared_kinds.cu"), include_dirs=[str(KERNELS)],
                           filename="shared_kinds.cu")
    monkeypatch.undo()
    check_poison_kinds(good)  # same .so: its registration was left as it was
