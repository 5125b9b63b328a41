"""Build a CUDA source into a CPU shared library (g++), cached on disk.

Contract:
  * ``build(code, name_expressions, options, include_dirs, sanitizer)`` returns a ``Built``:
    the path of a ``.so`` that exports, for the i-th name expression, ``cutrans_emu_launch_<i>``
    and ``cutrans_emu_sig_<i>``; the static ``__shared__`` storage to poison before every block
    (``SharedRange(offset from the load base, size, symbol)``, kept in a ``<key>.shared.json``
    sidecar); whether it was compiled now; whether libstdc++ is linked into it statically.
  * the module is compiled to an object first and then linked: the ``__shared__`` ranges come
    from the kernel's own object only, never from linked libraries (rules in
    ``_static_shared``); anything unexpected raises ``BuildError`` naming the symbol.
  * a toolchain that links libstdc++ statically (``$CXX`` is a relocated g++ whose
    ``libstdc++.so`` is not found, or adds ``-static-libstdc++``) gives a ``ToolchainWarning``
    when a module is built or loaded: kernels run, but ``sanitizer_env`` raises
    ``EmulationError`` (the sanitizer runtime needs libstdc++.so preloaded).
  * the cache key hashes the source text, every header under ``include_dirs``, the emulation
    header, the options, the sanitizer, the compiler path and its version; the cache directory
    is ``$CUTRANS_EMU_CACHE`` or ``~/.cache/cutrans/emu``. Builds write temporary files and
    ``os.replace`` them into place, so parallel processes may build the same module.
  * the scheduler mode (fibers / threads) is chosen at launch time: one library serves both.
  * ``compiler()`` and ``libstdcxx_linkage()`` are computed once per process (``$CXX`` is read
    on first use).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

from ._elf import Elf
from ._errors import BuildError, EmulationError, ToolchainWarning
from ._static_shared import SharedRange, shared_ranges

HEADER = Path(__file__).with_name("cuda_emu.h")
FORMAT = "3"  # cache layout: object-file __shared__ rules, sidecar {"ranges", "static_libstdcxx"};
# 3: -fno-strict-aliasing (kernels load rows as 16-byte words, as CUDA code does)
_HEADER_EXTS = (".h", ".hh", ".hpp", ".cuh", ".cu", ".inl", ".inc")
SANITIZER_FLAGS = {
    None: ["-O2"],
    "address": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
}


class Built(NamedTuple):
    path: str
    ranges: list[SharedRange]
    compiled: bool
    static_libstdcxx: bool


def sanitizer_env(sanitizer: str, env: dict | None = None) -> dict:
    """Environment for a child process that loads ``sanitizer``-built modules: the runtime and
    libstdc++ preloaded (so that the runtime can intercept C++ exceptions), leak checks off.
    Raises ``EmulationError`` when the toolchain cannot provide them (libstdc++ linked
    statically, a library that ``$CXX -print-file-name`` does not find)."""
    if sanitizer not in ("address", "thread"):
        raise ValueError(f"sanitizer must be 'address' or 'thread', not {sanitizer!r}")
    cxx = compiler_argv()
    if libstdcxx_linkage() == "static":
        raise EmulationError(f"sanitizer runs need libstdc++.so preloaded with the sanitizer runtime, but "
                             f"{toolchain_description()}: use a g++ whose libstdc++.so is found")
    rt = {"address": "libasan.so", "thread": "libtsan.so"}[sanitizer]
    libs = []
    for n in (rt, "libstdc++.so"):
        p = subprocess.run([*cxx, f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(p) or not os.path.exists(p):
            raise EmulationError(f"sanitizer={sanitizer!r} needs {n}, which `{compiler()[0]} -print-file-name={n}` "
                                 f"does not find (got {p!r})")
        libs.append(p)
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = " ".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    env[_PRELOADED] = " ".join(libs)  # for compiler_env: g++ runs without them
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    env.setdefault("TSAN_OPTIONS", "halt_on_error=0")
    return env


def cache_dir() -> Path:
    """The module cache: ``$CUTRANS_EMU_CACHE`` (``~`` expanded, made absolute) or
    ``~/.cache/cutrans/emu``; BuildError when it cannot be created."""
    env = os.environ.get("CUTRANS_EMU_CACHE")
    try:  # expanduser: RuntimeError without $HOME and a passwd entry (containers)
        p = Path(env or "~/.cache/cutrans/emu").expanduser().resolve()
        p.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as e:
        raise BuildError(f"the emulated modules' cache folder {env or '~/.cache/cutrans/emu'} "
                         f"cannot be created ({e}): set CUTRANS_EMU_CACHE to a writable folder"
                         + ("" if env else " (the default is ~/.cache/cutrans/emu)")) from None
    return p


COMPILER_TIMEOUT_S = 60  # the `$CXX --version` probe


@functools.lru_cache(maxsize=None)
def compiler() -> tuple[str, str]:
    """``($CXX or g++, its first --version line)``; ``$CXX`` may carry arguments
    (``ccache g++``: ``compiler_argv``). BuildError when it does not run."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise BuildError("g++ not found: the CPU emulation needs a C++20 compiler (set $CXX)")
    argv = compiler_argv(cxx)
    try:
        r = subprocess.run([*argv, "--version"], capture_output=True, text=True, env=compiler_env(),
                           timeout=COMPILER_TIMEOUT_S)
    except (OSError, ValueError, IndexError) as e:
        raise BuildError(f"CXX={cxx!r} does not run ({e}): the CPU emulation needs a C++20 compiler "
                         f"(g++)") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"CXX={cxx!r} --version did not answer within {COMPILER_TIMEOUT_S} s") from None
    if r.returncode != 0:
        raise BuildError(f"CXX={cxx!r} --version failed (exit {r.returncode}): "
                         f"{(r.stderr or r.stdout).strip()[-2000:]}")
    ver = r.stdout.splitlines()[:1]
    return cxx, (ver[0] if ver else "?")


def compiler_argv(cxx: str | None = None) -> list[str]:
    """``compiler()``'s command (or ``cxx``) as an argument list: ``$CXX`` is split like a
    shell command; a path found on PATH is one word (it may contain spaces)."""
    cxx = compiler()[0] if cxx is None else cxx
    return shlex.split(cxx) if cxx == os.environ.get("CXX") else [cxx]


def links_libstdcxx_statically(lib: Elf) -> bool:
    """A C++ shared library without a DT_NEEDED libstdc++ carries its own copy of it."""
    return not any(n.startswith("libstdc++.so") for n in lib.needed)


@functools.lru_cache(maxsize=None)
def libstdcxx_linkage() -> str:
    """"static" or "dynamic": how ``compiler()`` links libstdc++ into a shared library (probed
    once per process by linking a one-line C++ library)."""
    cxx = compiler_argv()
    with tempfile.TemporaryDirectory(prefix="cutrans-probe-") as tmp:
        src, lib = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        src.write_text('#include <stdexcept>\nvoid cutrans_probe() { throw std::runtime_error("probe"); }\n')
        # -z defs: a C driver (gcc) that links no C++ runtime fails here, not at load time
        r = subprocess.run([*cxx, "-fPIC", "-shared", "-Wl,-z,defs", str(src), "-o", str(lib)],
                           capture_output=True, text=True, env=compiler_env())
        if r.returncode != 0:
            raise BuildError(f"CXX={compiler()[0]!r} cannot link a C++ shared library (exit {r.returncode}; "
                             f"is it a C++ compiler?):\n{(r.stderr or r.stdout)[-4000:]}")
        return "static" if links_libstdcxx_statically(Elf(lib)) else "dynamic"


def toolchain_description(linkage: str | None = None) -> str:
    """One line naming the compiler, its version and how it links libstdc++ (for messages);
    ``linkage`` defaults to ``libstdcxx_linkage()``."""
    cxx, version = compiler()
    if linkage is None:
        try:
            linkage = libstdcxx_linkage()
        except BuildError:
            linkage = "unknown (cannot link a C++ shared library)"
    how = {"static": "statically (libstdc++.a)", "dynamic": "dynamically"}.get(linkage, linkage)
    return f"CXX={cxx} ({version}) links libstdc++ {how}"


def _warn_static_libstdcxx() -> None:
    warnings.warn(f"emulated modules link libstdc++ statically: {toolchain_description('static')}. Kernels "
                  f"run, but sanitizer runs are unavailable (they preload libstdc++.so)", ToolchainWarning)


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
    for part in (FORMAT, code, "\0".join(name_expressions), "\0".join(options), "\0".join(map(str, include_dirs)),
                 str(sanitizer), *compiler(), " ".join(SANITIZER_FLAGS[sanitizer])):
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
        'extern "C" int cutrans_emu_set_static_shared(const unsigned long long* off, const unsigned long long* sz, int n) {',
        "  return cutrans_emu::set_static_shared((const void*)&cutrans_emu_set_static_shared, off, sz, n);",
        "}",
        "",
    ]
    return "\n".join(lines)


def _read_sidecar(meta: Path, so: Path) -> tuple[list[SharedRange], bool] | None:
    """The cached module's shared ranges and linkage, or None to rebuild: no sidecar, another
    layout, or a module whose size is not the one recorded (a truncated copy would crash
    the process when loaded)."""
    try:
        d = json.loads(meta.read_text())
        if int(d["size"]) != so.stat().st_size:
            return None
        return [SharedRange(int(o), int(n), str(s)) for o, n, s in d["ranges"]], bool(d["static_libstdcxx"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, partial or another layout: rebuild


_PRELOADED = "CUTRANS_EMU_SANITIZER_PRELOAD"


def compiler_env() -> dict:
    """This process's environment without the sanitizer runtime that ``sanitizer_env``
    preloaded: g++ (and cc1plus) under a preloaded ThreadSanitizer runtime build many times
    slower."""
    env = dict(os.environ)
    ours = set(env.pop(_PRELOADED, "").split())
    if ours and "LD_PRELOAD" in env:
        rest = [p for p in env["LD_PRELOAD"].split() if p not in ours]
        if rest:
            env["LD_PRELOAD"] = " ".join(rest)
        else:
            del env["LD_PRELOAD"]
    return env


def _run(cmd: list[str], what: str) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=compiler_env())
    except OSError as e:
        raise BuildError(f"CXX={compiler()[0]!r} could not {what} the emulated module: {e}") from None
    if r.returncode != 0:
        out = "\n".join(x for x in (r.stderr.strip(), r.stdout.strip()) if x) or "(no output)"
        raise BuildError(f"CXX={compiler()[0]!r} failed to {what} the emulated module (exit "
                         f"{r.returncode}):\n{out[-8000:]}")


def build(code: str, name_expressions: Sequence[str], options: Sequence[str] = (),
          include_dirs: Sequence[str] = (), sanitizer: str | None = None) -> Built:
    """Compile (or find in the cache) the module; see the module docstring."""
    if sanitizer not in SANITIZER_FLAGS:
        raise ValueError(f"sanitizer must be None, 'address' or 'thread', not {sanitizer!r}")
    include_dirs = [str(Path(d).resolve()) for d in include_dirs]
    key = cache_key(code, name_expressions, options, include_dirs, sanitizer)
    root = cache_dir()
    so = root / f"{key}.so"
    meta = root / f"{key}.shared.json"
    cached = _read_sidecar(meta, so) if so.exists() else None
    if cached is not None:
        if cached[1]:
            _warn_static_libstdcxx()
        return Built(str(so), cached[0], False, cached[1])
    common = [*compiler_argv(), "-std=c++20", *SANITIZER_FLAGS[sanitizer], "-fPIC", "-pthread",
              "-fno-strict-aliasing"]
    # unresolved symbols fail the link (a C driver, a missing runtime), not the load; the
    # sanitizer builds resolve their runtime's symbols at load time (preloaded)
    defs = [] if sanitizer else ["-Wl,-z,defs"]
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{key}.") as tmp:
            return _build_in(tmp, root, key, code, name_expressions, options, include_dirs, common,
                             defs, so, meta)
    except OSError as e:  # e.g. a read-only cache folder
        raise BuildError(f"cannot build the emulated module in the cache folder {root} ({e}): set "
                         f"CUTRANS_EMU_CACHE to a writable folder") from None


def _build_in(tmp, root, key, code, name_expressions, options, include_dirs, common, defs, so,
              meta) -> Built:
    """``build``'s compile and link in the temporary folder ``tmp`` of the cache."""
    src = root / f"{key}.cu"  # stays next to the .so: sanitizer reports and debuggers name it
    tmp_src = Path(tmp) / "src.cu"
    tmp_src.write_text(code)
    os.replace(tmp_src, src)
    wrapper = Path(tmp) / "wrapper.cpp"
    wrapper.write_text(wrapper_source(str(src), name_expressions))
    obj, out = Path(tmp) / "wrapper.o", Path(tmp) / "mod.so"
    _run([*common, "-U_FORTIFY_SOURCE", "-fno-gnu-unique", "-DCUTRANS_EMULATION", "-include", str(HEADER),
          f"-I{HEADER.parent}", *[f"-I{d}" for d in include_dirs], *translate_options(options),
          "-c", str(wrapper), "-o", str(obj)], "compile")
    _run([*common, "-shared", *defs, str(obj), "-o", str(out), "-ldl"], "link")
    lib = Elf(out)
    ranges = shared_ranges(Elf(obj), lib)
    static = links_libstdcxx_statically(lib)
    tmp_meta = Path(tmp) / "meta.json"
    tmp_meta.write_text(json.dumps({"ranges": [list(r) for r in ranges], "static_libstdcxx": static,
                                    "size": out.stat().st_size}))
    os.replace(out, so)
    os.replace(tmp_meta, meta)  # last: a sidecar means a complete module
    if static:
        _warn_static_libstdcxx()
    return Built(str(so), ranges, True, static)
