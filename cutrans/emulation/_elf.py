"""Minimal reader of 64-bit ELF files (objects and shared libraries): sections, symbols, NEEDED.

Only what the emulator needs to locate static ``__shared__`` storage (see ``_static_shared``)
and to tell how libstdc++ was linked; no dependency on binutils output formats. Malformed or
unsupported files raise ``BuildError``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ._errors import BuildError

SHT_SYMTAB, SHT_STRTAB, SHT_DYNAMIC, SHT_DYNSYM = 2, 3, 6, 11
SHF_WRITE, SHF_ALLOC, SHF_GROUP, SHF_TLS = 0x1, 0x2, 0x200, 0x400
STT_OBJECT, STT_TLS = 1, 6
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
DT_NULL, DT_NEEDED = 0, 1


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    size: int

    @property
    def writable(self) -> bool:
        """Writable, not thread-local and not made read-only after relocation (RELRO)."""
        return bool(self.flags & SHF_WRITE) and not self.flags & SHF_TLS and \
            not self.name.startswith(".data.rel.ro")


@dataclass(frozen=True)
class Symbol:
    name: str
    type: int   # STT_*
    bind: int   # STB_*
    shndx: int  # section index; 0 = undefined, >= 0xff00 = special (ABS, COMMON, ...)
    value: int  # section offset in an object, virtual address in a shared library
    size: int

    @property
    def defined_in_section(self) -> bool:
        return SHN_UNDEF < self.shndx < SHN_LORESERVE


class Elf:
    """Sections, symbols (``.symtab``, else ``.dynsym``) and DT_NEEDED of one ELF file."""

    def __init__(self, path):
        self.path = str(path)
        data = Path(path).read_bytes()
        if data[:4] != b"\x7fELF":
            raise BuildError(f"{self.path}: not an ELF file")
        if data[4] != 2 or data[5] not in (1, 2):
            raise BuildError(f"{self.path}: only 64-bit ELF is supported by the emulator")
        self._e = "<" if data[5] == 1 else ">"
        self._data = data
        (_, _, _, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = \
            self._unpack("16sHHIQQQIHHHHHH", 0)
        if shnum == 0 or shstrndx >= shnum:  # extended numbering (>= 0xff00 sections)
            raise BuildError(f"{self.path}: too many sections (extended ELF numbering unsupported)")
        raw = [self._unpack("IIQQQQIIQQ", shoff + i * shentsize) for i in range(shnum)]
        self._raw_sections = raw
        names = raw[shstrndx]
        self.sections = [Section(i, self._str(names[4], s[0]), s[1], s[2], s[3], s[5])
                         for i, s in enumerate(raw)]
        self.symbols = self._symbols()
        self.needed = self._needed()

    def _unpack(self, fmt: str, off: int) -> tuple:
        try:
            return struct.unpack_from(self._e + fmt, self._data, off)
        except struct.error as e:
            raise BuildError(f"{self.path}: truncated ELF file ({e})") from None

    def _str(self, table_off: int, off: int) -> str:
        end = self._data.find(b"\0", table_off + off)
        return self._data[table_off + off:end].decode(errors="replace")

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def _symbols(self) -> list[Symbol]:
        for kind in (SHT_SYMTAB, SHT_DYNSYM):
            tab = next((s for s in self._raw_sections if s[1] == kind), None)
            if tab is None:
                continue
            strings = self._raw_sections[tab[6]][4]
            out = []
            for off in range(tab[4], tab[4] + tab[5], tab[9] or 24):
                name, info, _, shndx, value, size = self._unpack("IBBHQQ", off)
                out.append(Symbol(self._str(strings, name), info & 0xF, info >> 4, shndx, value, size))
            return out
        return []

    def _needed(self) -> list[str]:
        dyn = next((s for s in self._raw_sections if s[1] == SHT_DYNAMIC), None)
        if dyn is None:
            return []
        strings = self._raw_sections[dyn[6]][4]
        out = []
        for off in range(dyn[4], dyn[4] + dyn[5], 16):
            tag, val = self._unpack("qQ", off)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                out.append(self._str(strings, val))
        return out
