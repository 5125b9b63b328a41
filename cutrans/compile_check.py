"""Compile CUDA sources with NVRTC exactly as ``cupy.RawModule`` does -- without a GPU.

Contract::

    compile_source(code, name_expressions, *, arch="sm_80", method="cubin"|"ptx",
                   options=(), include_dirs=(), filename="kernel.cu") -> bytes
    nvrtc_archs() -> ["sm_70", "sm_75", "sm_80", "sm_90"]   # those this NVRTC accepts
    resource_usage(code, name_expressions, arch="sm_80", ...) -> {kernel: {"registers",
        "spill_stores", "spill_loads", "shared_bytes", "stack_bytes", "mangled"}}
    check_limits(usage, max_registers=None, max_shared=None, allow_spills=False)  # AssertionError
    sass(code, name_expressions, arch="sm_90", ...) -> {kernel: [SASS instruction, ...]}
    sass_stats(instructions) -> {"instructions", "mufu", "barriers", "between_barriers"}

Options are RawModule's: ``cupy._core.core.assemble_cupy_compiler_options(options)`` +
``-ftz=true`` + ``-arch=sm_XX`` (``compute_XX`` for PTX) + ``--device-as-default-execution-space``
compiled by ``cupy.cuda.compiler._NVRTCProgram``. These are private CuPy APIs, verified with
CuPy 14.x (pinned in pyproject). The CUDA headers are those of the NVIDIA runtime wheel
(``nvidia/cuda_runtime/include`` or ``nvidia/cu13/include``), put first on the include path;
any other ``-I`` holding ``cuda_runtime.h`` (e.g. /usr/local/cuda/include) is dropped.
Compile errors raise CompileError whose message holds NVRTC's ``file(line): error`` lines;
a missing CuPy/NVRTC raises RuntimeError. No device is touched.

Static SASS (``sass``, ``--sass``) needs ``nvdisasm`` (on PATH or from the
``nvidia-cuda-nvdisasm`` wheel, the ``toolchain`` extra): a GPU-free view of what a kernel
change does to the machine code (instruction counts, special-function ops, instructions
between barriers, e.g. per lattice wavefront step). Static counts, not timings.

Developer command: ``python -m cutrans.compile_check [--arch sm_90] [--name EXPR] [--sass]
[FILES...]`` prints registers / spills / shared memory per kernel (with ``--sass``: static SASS
counts); name expressions can also be listed in the source as ``// cutrans:names expr1; expr2``
lines. Default FILES: the package's kernels.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ARCHS = ("sm_70", "sm_75", "sm_80", "sm_90")


class CompileError(RuntimeError):
    """NVRTC rejected the source; ``log`` holds its output (``file(line): error: ...``)."""

    def __init__(self, log: str, filename: str):
        self.log, self.filename = log, filename
        super().__init__(f"NVRTC failed to compile {filename}:\n{log}")


def _cupy():
    try:
        from cupy._core import core
        from cupy.cuda import compiler
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"compile_check needs CuPy (cupy-cuda12x/13x 14.x) and NVRTC: {e}") from e
    try:
        nvrtc.getVersion()
    except Exception as e:  # pragma: no cover
        raise RuntimeError(f"NVRTC is not loadable (install nvidia-cuda-nvrtc-cu12): {e}") from e
    return core, compiler, nvrtc


def nvrtc_version() -> tuple[int, int]:
    return tuple(_cupy()[2].getVersion())


def nvrtc_library() -> str | None:
    """Path of the libnvrtc loaded in this process (after a first NVRTC call)."""
    _cupy()
    with open("/proc/self/maps") as f:
        for line in f:
            if "libnvrtc.so" in line:
                return line.split()[-1]
    return None


def wheel_cuda_include() -> str:
    """The include directory of the CUDA runtime wheel (nvidia-cuda-runtime-cu12 / cu13)."""
    try:
        import nvidia
    except ImportError as e:
        raise RuntimeError("the CUDA runtime headers wheel is missing: pip install nvidia-cuda-runtime-cu12") from e
    major = nvrtc_version()[0]
    for root in nvidia.__path__:
        for sub in (f"cu{major}/include", "cuda_runtime/include"):
            if (Path(root) / sub / "cuda_runtime.h").is_file():
                return str(Path(root) / sub)
    raise RuntimeError("cuda_runtime.h not found in the nvidia wheels: pip install nvidia-cuda-runtime-cu12")


def supported_archs() -> set[str]:
    """Every architecture this NVRTC compiles for (``sm_XX``)."""
    return {f"sm_{a}" for a in _cupy()[2].getSupportedArchs()}


def nvrtc_archs() -> list[str]:
    """The architectures of ARCHS that this NVRTC accepts."""
    supported = supported_archs()
    return [a for a in ARCHS if a in supported]


ARCH_PATTERN = r"sm_\d+a?"  # sm_90, sm_90a


def rawmodule_options(options: Sequence[str] = (), include_dirs: Sequence[str] = (), *, arch: str = "sm_80",
                      method: str = "cubin") -> tuple[str, ...]:
    """The NVRTC option list RawModule would use (plus the wheel's headers, first)."""
    core, _, _ = _cupy()
    if not re.fullmatch(ARCH_PATTERN, arch):
        raise ValueError(f"arch must look like 'sm_80', not {arch!r}")
    if method not in ("cubin", "ptx"):
        raise ValueError("method must be 'cubin' or 'ptx'")
    inc = wheel_cuda_include()
    user = tuple(options) + tuple(f"-I{Path(d).resolve()}" for d in include_dirs)
    opts = [f"-I{inc}"]
    for o in core.assemble_cupy_compiler_options(user):
        d = o[2:] if o.startswith("-I") else None
        if d is not None and (os.path.isfile(os.path.join(d, "cuda_runtime.h")) and
                              Path(d).resolve() != Path(inc).resolve()):
            continue  # a CUDA toolkit that is not the wheel's (e.g. /usr/local/cuda 13.0)
        if o not in opts:
            opts.append(o)
    num = arch[3:]
    opts += ["-ftz=true", f"-arch=sm_{num}" if method == "cubin" else f"-arch=compute_{num}",
             "--device-as-default-execution-space"]
    return tuple(opts)


def _compile(code, name_expressions, arch, method, options, include_dirs, filename, extra=()):
    """(bytes: the whole cubin (``complete_cubin``) or the PTX, name mapping, log)."""
    _, compiler, _ = _cupy()
    opts = rawmodule_options(options, include_dirs, arch=arch, method=method) + tuple(extra)
    prog = compiler._NVRTCProgram(code, filename, name_expressions=list(name_expressions) or None,
                                  method=method)
    log = io.StringIO()
    try:
        binary, mapping = prog.compile(opts, log)
    except compiler.CompileException as e:
        raise CompileError(_log_of(e), filename) from None
    binary = binary if isinstance(binary, bytes) else bytes(binary)
    if method == "cubin":
        binary = complete_cubin(binary)
    return binary, mapping or {}, log.getvalue()


def _log_of(e) -> str:
    msg = str(e)
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return "\n".join(lines)


def compile_source(code: str, name_expressions: Sequence[str] = (), *, arch: str = "sm_80",
                   method: str = "cubin", options: Sequence[str] = (), include_dirs: Sequence[str] = (),
                   filename: str = "kernel.cu") -> bytes:
    """Compile like RawModule; return the cubin (a whole ELF image, see ``complete_cubin``) or
    PTX bytes. Raises CompileError."""
    binary, _, _ = _compile(code, name_expressions, arch, method, options, include_dirs, filename)
    return binary


def complete_cubin(image: bytes) -> bytes:
    """The cubin padded with zero bytes to the end of its ELF header tables.

    CuPy's ``nvrtc.getCUBIN`` returns the image without its last byte (it strips it like a C
    string's NUL); NVRTC puts the program header table last, and its final byte (the high byte
    of the last segment's alignment) is 0. Tools that read the whole ELF (nvdisasm) need it.
    """
    if image[:4] != b"\x7fELF" or len(image) < 64:
        return image
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    end = max(phoff + phnum * phentsize, shoff + shnum * shentsize)
    return image + bytes(max(0, end - len(image)))


def nvdisasm() -> str | None:
    """Path of ``nvdisasm``: on PATH, else the ``nvidia-cuda-nvdisasm`` wheel's; None if absent."""
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for rel in ("cu13/bin/nvdisasm", "cuda_nvdisasm/bin/nvdisasm", "cu12/bin/nvdisasm"):
            path = Path(root, rel)
            if path.is_file():
                return str(path)
    return None


_SASS_FUNC = re.compile(r"^\s*\.text\.(\S+):\s*$")
_SASS_INSN = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;?\s*(?:/\*.*)?$")


def sass(code: str, name_expressions: Sequence[str] = (), arch: str = "sm_90", *,
         options: Sequence[str] = (), include_dirs: Sequence[str] = (),
         filename: str = "kernel.cu") -> dict[str, list[str]]:
    """Each kernel's SASS instructions (``nvdisasm -c`` lines without addresses), keyed by
    name expression where one was given, else by mangled name. RuntimeError without
    nvdisasm."""
    tool = nvdisasm()
    if tool is None:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm (or put the CUDA "
                           "toolkit's bin on PATH)")
    image, mapping, _ = _compile(code, name_expressions, arch, "cubin", options, include_dirs,
                                 filename)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernels.cubin")
        path.write_bytes(image)
        run = subprocess.run([tool, "-c", str(path)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{tool} could not disassemble the {arch} cubin (exit "
                           f"{run.returncode}): {(run.stderr or run.stdout).strip()}")
    text = run.stdout
    by_mangled = {v: k for k, v in mapping.items()}
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if m := _SASS_FUNC.match(line):
            current = out.setdefault(by_mangled.get(m.group(1), m.group(1)), [])
        elif current is not None and (m := _SASS_INSN.match(line)):
            current.append(m.group(1))
    return out


def sass_stats(instructions: Sequence[str]) -> dict:
    """Static counts of one kernel's SASS: instructions, special-function ops (MUFU: exp,
    log, rcp, ...), block barriers, and the instructions between consecutive barriers (a
    wavefront kernel's code per step, all paths counted)."""
    bars = [i for i, ins in enumerate(instructions) if "BAR.SYNC" in ins]
    return {"instructions": len(instructions),
            "mufu": sum("MUFU." in ins for ins in instructions),
            "barriers": len(bars),
            "between_barriers": [b - a - 1 for a, b in zip(bars, bars[1:])]}


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Parse ``--ptxas-options=-v`` output into {mangled name: usage}."""
    usage: dict[str, dict[str, int]] = {}
    cur = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = usage.setdefault(m.group(1), {"registers": 0, "spill_stores": 0, "spill_loads": 0,
                                                "shared_bytes": 0, "stack_bytes": 0})
        elif (m := _PROPS.search(line)) and m.group(1) in usage:
            cur = usage[m.group(1)]
        elif cur is not None and (m := _SPILL.search(line)):
            cur["stack_bytes"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        elif cur is not None and (m := _USED.search(line)):
            cur["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            cur["shared_bytes"] = int(s.group(1)) if s else 0
    return usage


def resource_usage(code: str, name_expressions: Sequence[str] = (), arch: str = "sm_80", *,
                   options: Sequence[str] = (), include_dirs: Sequence[str] = (),
                   filename: str = "kernel.cu") -> dict[str, dict]:
    """Per-kernel registers / spills / static shared bytes from ptxas -v, keyed by name
    expression where one was given for the kernel, else by mangled name."""
    _, mapping, log = _compile(code, name_expressions, arch, "cubin", options, include_dirs, filename,
                               extra=("--ptxas-options=-v",))
    by_mangled = {v: k for k, v in mapping.items()}
    out = {}
    for mangled, u in parse_ptxas_log(log).items():
        out[by_mangled.get(mangled, mangled)] = dict(u, mangled=mangled)
    return out


def check_limits(usage: dict[str, dict], max_registers: int | None = None, max_shared: int | None = None,
                 allow_spills: bool = False) -> None:
    """Raise AssertionError listing every kernel over a limit (or spilling, unless allowed)."""
    bad = []
    for k, u in usage.items():
        if max_registers is not None and u["registers"] > max_registers:
            bad.append(f"{k}: {u['registers']} registers > {max_registers}")
        if max_shared is not None and u["shared_bytes"] > max_shared:
            bad.append(f"{k}: {u['shared_bytes']} bytes shared memory > {max_shared}")
        if not allow_spills and (u["spill_stores"] or u["spill_loads"]):
            bad.append(f"{k}: spills ({u['spill_stores']} bytes stored, {u['spill_loads']} loaded)")
    if bad:
        raise AssertionError("kernel resource limits exceeded:\n  " + "\n  ".join(bad))


def names_in_source(code: str) -> list[str]:
    """Name expressions listed in ``// cutrans:names a; b`` comment lines."""
    out = []
    for m in re.finditer(r"//\s*cutrans:names\s+(.*)", code):
        out += [s.strip() for s in m.group(1).split(";") if s.strip()]
    return out


def _package_names(f: Path) -> list[str]:
    """The kernel loader's name expressions for one of the package's sources (its template
    instantiations), or none for another file."""
    from . import _kernels
    return _kernels.name_expressions(f.name) if f.name in _kernels.sources() else []


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cutrans.compile_check", description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help=".cu files (default: the package's kernels/*.cu)")
    ap.add_argument("--arch", action="append", help="sm_XX (repeatable; default: all of nvrtc_archs())")
    ap.add_argument("--name", action="append", default=[], help="name expression (repeatable)")
    ap.add_argument("-I", dest="include", action="append", default=[], help="include directory")
    ap.add_argument("-D", dest="define", action="append", default=[], help="macro definition")
    ap.add_argument("--sass", action="store_true",
                    help="static SASS counts instead (needs nvdisasm; default arch sm_90)")
    a = ap.parse_args(argv)
    from . import _kernels
    kdir = Path(_kernels.kernels_dir())  # the package's own (not any folder named kernels)
    files = [Path(f) for f in a.files] or sorted(kdir.glob("*.cu"))
    if not files:  # a silent pass would check nothing
        ap.error(f"no .cu files in the package's kernel folder {kdir}")
    for f in files:
        if not f.is_file():
            ap.error(f"{f}: no such file")
    for arch in a.arch or ():
        if not re.fullmatch(ARCH_PATTERN, arch):
            ap.error(f"--arch: expected a name like 'sm_90', got {arch!r}")
    try:
        supported = supported_archs()
        archs = a.arch or (["sm_90"] if a.sass else nvrtc_archs())
        print(f"NVRTC {'.'.join(map(str, nvrtc_version()))}; headers {wheel_cuda_include()}")
    except RuntimeError as e:  # no CuPy / NVRTC: say so without a traceback
        print(f"compile_check: {e}", file=sys.stderr)
        return 1
    for arch in archs:
        if arch.rstrip("a") not in supported:
            ap.error(f"--arch {arch}: this NVRTC supports {', '.join(sorted(supported))}")
    rc = 0
    for f in files:
        code = f.read_text()
        names = a.name or names_in_source(code) or _package_names(f)
        if not names:  # nothing to instantiate: a silent pass would check nothing
            print(f"{f}: no kernel names (pass --name, or list them in a "
                  f"'// cutrans:names' line)", file=sys.stderr)
            rc = 1
            continue
        for arch in archs:
            if a.sass:
                rc |= _print_sass(f, code, names, arch, [f"-D{d}" for d in a.define],
                                  [f.parent, kdir, *a.include])
                continue
            try:
                usage = resource_usage(code, names, arch, options=[f"-D{d}" for d in a.define],
                                       include_dirs=[f.parent, kdir, *a.include], filename=f.name)
            except CompileError as e:
                print(e.log, file=sys.stderr)
                rc = 1
                continue
            for k, u in usage.items():
                print(f"{f.name} {arch} {k}: {u['registers']} regs, {u['spill_stores']}/{u['spill_loads']} "
                      f"B spill st/ld, {u['stack_bytes']} B stack, {u['shared_bytes']} B smem")
    return rc


def _print_sass(f: Path, code: str, names, arch: str, options, include_dirs) -> int:
    try:
        kernels = sass(code, names, arch, options=options, include_dirs=include_dirs,
                       filename=f.name)
    except (CompileError, RuntimeError) as e:
        print(getattr(e, "log", e), file=sys.stderr)
        return 1
    for k, ins in kernels.items():
        st = sass_stats(ins)
        between = st["between_barriers"]
        steps = f", between barriers {min(between)}-{max(between)}" if between else ""
        print(f"{f.name} {arch} {k}: {st['instructions']} SASS instructions, {st['mufu']} MUFU, "
              f"{st['barriers']} barriers{steps} (static)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
