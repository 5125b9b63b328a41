"""Where the static ``__shared__`` storage of an emulated module lies (poisoned before each block).

``cuda_emu.h`` defines ``__shared__`` as ``static __attribute__((section("cutrans_shared")))``.
g++ honours the section for ordinary statics but not for COMDAT data: the function-local
statics of template instantiations (and of inline functions) land in their own group sections
(``.bss.<symbol>``). The storage is therefore found in two ways, both read from the kernel's
own object file (``wrapper.o``) and never from what the linker adds (a statically linked
libstdc++ has thread-local and ``.bss`` function-local statics of its own):

  * the ``cutrans_shared`` section, if the object has one: the whole section of the module;
  * OBJECT symbols of the object that are function-local statics (``_ZZ...``) in a writable,
    non-TLS, non-RELRO section of a COMDAT group, outside the namespaces ``std``,
    ``__gnu_cxx``, ``__cxxabiv1`` and ``cutrans_emu`` (library and emulator state, never
    ``__shared__``). Each is looked up by name in the linked module, where it must have exactly
    one OBJECT definition of the same size in a writable, non-TLS section.

The result is a list of ``SharedRange(offset from the load base, size, name)``; anything that
breaks these rules raises ``BuildError`` naming the symbol. The launcher checks the ranges once
more against the loaded module's writable segments (``cuda_emu.h``: ``set_static_shared``).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from ._elf import SHF_GROUP, STT_OBJECT, Elf, Symbol
from ._errors import BuildError

SECTION = "cutrans_shared"
# function-local statics (_Z, one Z more per enclosing local entity) of functions in std
# (St and the standard abbreviations Sa Sb Ss Si So Sd), __gnu_cxx, __cxxabiv1, cutrans_emu
_NOT_SHARED = re.compile(r"_Z+(?:N[rVKRO]*)?L?(?:S[tabsiod]|9__gnu_cxx|10__cxxabiv1|11cutrans_emu)")


class SharedRange(NamedTuple):
    offset: int  # from the module's load base
    size: int
    name: str    # the symbol, or "cutrans_shared" for the whole section


def object_shared_symbols(obj: Elf) -> list[Symbol]:
    """The template/inline function-local ``__shared__`` statics defined by the object."""
    out = []
    for s in obj.symbols:
        if s.type != STT_OBJECT or not s.defined_in_section or not s.name.startswith("_ZZ"):
            continue
        sec = obj.sections[s.shndx]
        if sec.name == SECTION or not sec.writable or not sec.flags & SHF_GROUP:
            continue
        if not _NOT_SHARED.match(s.name):
            out.append(s)
    return out


def shared_ranges(obj: Elf, so: Elf) -> list[SharedRange]:
    """The static ``__shared__`` ranges of the module ``so`` linked from the object ``obj``."""
    ranges = []
    own = obj.section(SECTION)
    if own is not None and own.size:
        sec = so.section(SECTION)
        if sec is None or not sec.writable:
            raise BuildError(f"{so.path}: section {SECTION} missing or not writable after linking")
        ranges.append(SharedRange(sec.addr, sec.size, SECTION))
    wanted = {s.name: s for s in object_shared_symbols(obj)}
    found: dict[str, list[Symbol]] = {}
    for s in so.symbols:
        if s.name in wanted and s.type == STT_OBJECT and s.defined_in_section:
            found.setdefault(s.name, []).append(s)
    for name, want in wanted.items():
        defs = found.get(name, [])
        if len(defs) != 1:
            raise BuildError(f"{so.path}: __shared__ symbol {name} has {len(defs)} definitions in the "
                             f"linked module (expected 1)")
        d = defs[0]
        if d.size != want.size or not so.sections[d.shndx].writable:
            raise BuildError(f"{so.path}: __shared__ symbol {name} is not a writable {want.size}-byte "
                             f"object in the linked module (section {so.sections[d.shndx].name}, "
                             f"{d.size} bytes)")
        ranges.append(SharedRange(d.value, d.size, name))
    return ranges
