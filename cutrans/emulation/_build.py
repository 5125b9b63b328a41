"""Build a CUDA source into a CPU shared library (g++), cached on disk.

Contract:
  * ``build(code, name_expressions, options, include_dirs, sanitizer)`` returns the path of a
    ``.so`` that exports, for the i-th name expression, ``cutrans_emu_launch_<i>`` and
    ``cutrans_emu_sig_<i>``, plus a ``<so>.shared.json`` sidecar listing the static
    ``__shared__`` storage (offsets from the load base, sizes) to poison before every block.
  * the cache key hashes the source text, every header under ``include_dirs``, the emulation
    header, the options, the sanitizer and the g++ version; the cache directory is
    ``$CUTRANS_EMU_CACHE`` or ``~/.cache/cutrans/emu``. Builds write temporary files and
    ``os.replace`` them into place, so parallel processes may build the same module.
  * the scheduler mode (fibers / threads) is chosen at launch time: one library serves both.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

HEADER = Path(__file__).with_name("cuda_emu.h")
_HEADER_EXTS = (".h", ".hh", ".hpp", ".cuh", ".cu", ".inl", ".inc")
SANITIZER_FLAGS = {
    None: ["-O2"],
    "address": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
}


class BuildError(RuntimeError):
    """g++ failed; the message carries the compiler output."""


def sanitizer_env(sanitizer: str, env: dict | None = None) -> dict:
    """Environment for a child process that loads ``sanitizer``-built modules: the runtime and
    libstdc++ preloaded (so that the runtime can intercept C++ exceptions), leak checks off."""
    if sanitizer not in ("address", "thread"):
        raise ValueError(f"sanitizer must be 'address' or 'thread', not {sanitizer!r}")
    cxx, _ = compiler()
    rt = {"address": "libasan.so", "thread": "libtsan.so"}[sanitizer]
    libs = [subprocess.run([cxx, f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
            for n in (rt, "libstdc++.so")]
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = " ".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    env.setdefault("TSAN_OPTIONS", "halt_on_error=0")
    return env


def cache_dir() -> Path:
    d = os.environ.get("CUTRANS_EMU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cutrans", "emu")
    p = Path(d)
    p.mkdir(parents=True, exist_ok=True)
    return p


@functools.lru_cache(maxsize=None)
def compiler() -> tuple[str, str]:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise BuildError("g++ not found: the CPU emulation needs a C++20 compiler (set $CXX)")
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return cxx, (ver[0] if ver else "?")


def translate_options(options: Sequence[str]) -> list[str]:
    """Keep the preprocessor options of an NVRTC option list (-D, -U, -I); drop the rest."""
    out: list[str] = []
    it = iter(options)
    for o in it:
        if o in ("-D", "-U", "-I", "--define-macro", "--undefine-macro", "--include-path"):
            v = next(it, "")
            out += [{"--define-macro": "-D", "--undefine-macro": "-U", "--include-path": "-I"}.get(o, o), v]
        elif o.startswith(("-D", "-U", "-I")):
            out.append(o)
        elif o.startswith(("--define-macro=", "--undefine-macro=", "--include-path=")):
            flag = {"--define-macro": "-D", "--undefine-macro": "-U", "--include-path": "-I"}[o.split("=", 1)[0]]
            out.append(flag + o.split("=", 1)[1])
    return out


def _headers_digest(h, include_dirs: Sequence[str]) -> None:
    for d in include_dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in _HEADER_EXTS:
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")


def cache_key(code, name_expressions, options, include_dirs, sanitizer) -> str:
    h = hashlib.sha256()
    for part in (code, "\0".join(name_expressions), "\0".join(options), "\0".join(map(str, include_dirs)),
                 str(sanitizer), compiler()[1], " ".join(SANITIZER_FLAGS[sanitizer])):
        h.update(part.encode() + b"\1")
    h.update(HEADER.read_bytes())
    _headers_digest(h, include_dirs)
    return h.hexdigest()[:32]


def wrapper_source(src_path: str, name_expressions: Sequence[str]) -> str:
    lines = [f'#include "{src_path}"', ""]
    for i, ne in enumerate(name_expressions):
        lines += [
            f'extern "C" int cutrans_emu_launch_{i}(const cutrans_emu::LaunchCfg* c, void** a, char* e, size_t n) {{',
            f"  return cutrans_emu::launch(&{ne}, c, a, e, n);",
            "}",
            f'extern "C" int cutrans_emu_sig_{i}(cutrans_emu::ParamInfo* p, int m) {{',
            f"  return cutrans_emu::signature(&{ne}, p, m);",
            "}",
        ]
    lines += [
        'extern "C" void cutrans_emu_set_static_shared(const unsigned long long* off, const unsigned long long* sz, int n) {',
        "  Dl_info info; dladdr((void*)&cutrans_emu_set_static_shared, &info);",
        "  auto* base = static_cast<unsigned char*>(info.dli_fbase);",
        "  cutrans_emu::g_static_shared.clear();",
        "  for (int i = 0; i < n; ++i) cutrans_emu::g_static_shared.push_back({base + off[i], size_t(sz[i])});",
        "}",
        "",
    ]
    return "\n".join(lines)


def _static_shared_ranges(so: str) -> list[tuple[int, int]]:
    """(offset, size) of the `__shared__` statics: the `cutrans_shared` section plus the
    function-local statics of template instantiations (g++ puts those in COMDAT .bss)."""
    nm = shutil.which("nm")
    if not nm:
        raise BuildError("nm (binutils) not found")
    out = subprocess.run([nm, "-S", "--defined-only", so], capture_output=True, text=True, check=True).stdout
    syms = []
    start = stop = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "__start_cutrans_shared":
            start = int(parts[0], 16)
        elif len(parts) == 3 and parts[2] == "__stop_cutrans_shared":
            stop = int(parts[0], 16)
        elif len(parts) == 4 and parts[2] in "bBdDuV" and parts[3].startswith("_ZZ"):
            name = parts[3]
            if name.startswith(("_ZZNSt", "_ZZN11cutrans_emu", "_ZZN9__gnu_cxx")):
                continue
            syms.append((int(parts[0], 16), int(parts[1], 16)))
    ranges = []
    if start is not None and stop is not None and stop > start:
        ranges.append((start, stop - start))
    for off, size in syms:
        if not (start is not None and stop is not None and start <= off < stop):
            ranges.append((off, size))
    return ranges


def build(code: str, name_expressions: Sequence[str], options: Sequence[str] = (),
          include_dirs: Sequence[str] = (), sanitizer: str | None = None) -> tuple[str, list[tuple[int, int]], bool]:
    """Return (path of the .so, static shared ranges, whether it was compiled now)."""
    if sanitizer not in SANITIZER_FLAGS:
        raise ValueError(f"sanitizer must be None, 'address' or 'thread', not {sanitizer!r}")
    include_dirs = [str(Path(d).resolve()) for d in include_dirs]
    key = cache_key(code, name_expressions, options, include_dirs, sanitizer)
    root = cache_dir()
    so = root / f"{key}.so"
    meta = root / f"{key}.shared.json"
    if so.exists() and meta.exists():
        return str(so), [tuple(r) for r in json.loads(meta.read_text())], False
    cxx, _ = compiler()
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{key}.") as tmp:
        src = root / f"{key}.cu"  # stays next to the .so: sanitizer reports and debuggers name it
        tmp_src = Path(tmp) / "src.cu"
        tmp_src.write_text(code)
        os.replace(tmp_src, src)
        wrapper = Path(tmp) / "wrapper.cpp"
        wrapper.write_text(wrapper_source(str(src), name_expressions))
        out = Path(tmp) / "mod.so"
        cmd = [cxx, "-std=c++20", *SANITIZER_FLAGS[sanitizer], "-fPIC", "-shared", "-pthread", "-U_FORTIFY_SOURCE",
               "-fno-gnu-unique", "-DCUTRANS_EMULATION", "-include", str(HEADER), f"-I{HEADER.parent}",
               *[f"-I{d}" for d in include_dirs], *translate_options(options), str(wrapper), "-o", str(out), "-ldl"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"g++ failed to build the emulated module:\n{r.stderr[-8000:]}")
        ranges = _static_shared_ranges(str(out))
        tmp_meta = Path(tmp) / "meta.json"
        tmp_meta.write_text(json.dumps(ranges))
        os.replace(tmp_meta, meta)
        os.replace(out, so)
    return str(so), ranges, True
