"""Measurement primitives: peak memory probes, timers, available memory, environment.

CPU memory is measured in a fresh subprocess per method (see ``worker``): the peak resident
set size (``VmHWM``) is reset through ``/proc/self/clear_refs`` after set-up and warm-up,
and the reported number is ``peak - RSS before the timed calls``. That counts what NumPy,
PyTorch and Numba allocate alike (``tracemalloc`` sees only NumPy/Python allocations; it
is reported too for the NumPy-based cutrans paths). The worker runs with a fixed glibc
mmap threshold so freed big arrays go back to the OS between calls.

GPU memory: allocator peaks. CuPy: a ``cupy.cuda.MemoryHook`` that tracks bytes handed
out by the memory pool (current and peak); PyTorch: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``. GPU time: CUDA events around the call, then a device
synchronize.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import sys
import time

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ------------------------------------------------------------------ sizes
def parse_bytes(text: str) -> int:
    """``"512M"``, ``"1.5G"``, ``"64KiB"``, ``"1000"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"expected a size like 64M, 1.5G or 1048576, got {text!r}")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_positive_bytes(text: str) -> int:
    """``parse_bytes`` of a size that must be at least one byte."""
    n = parse_bytes(text)
    if n < 1:
        raise ValueError(f"expected a positive size, got {text!r}")
    return n


def fmt_bytes(n: float | None) -> str:
    """Human-readable binary size (``"1.23 GiB"``); ``"-"`` for None."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


# ------------------------------------------------------------------ CPU probes
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _status_bytes(field: str) -> int:
    """``/proc/self/status`` field in bytes; elsewhere the peak RSS is all we have."""
    kib = _status_kib(field)
    if kib is not None:
        return kib * 1024
    import resource  # pragma: no cover - non-Linux fallback

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    return _status_bytes("VmHWM")


def available_memory(device: str) -> int:
    """Bytes a new allocation can use: ``MemAvailable`` (CPU) or free GPU memory."""
    if device == "cuda":
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))  # pragma: no cover


# ------------------------------------------------------------------ GPU probes
def cupy_peak_hook():
    """A ``cupy.cuda.MemoryHook`` recording current and peak pool-allocated bytes."""
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "cutrans-bench-peak"

        def __init__(self):
            self.current = 0
            self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.current += mem_size
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.current -= mem_size

        def reset(self):
            self.peak = self.current

    return PeakHook()


class CudaTimer:
    """CUDA events (CuPy's; PyTorch kernels run on the same device) around one call."""

    def __init__(self):
        import cupy

        self._cupy = cupy
        self.start = cupy.cuda.Event()
        self.end = cupy.cuda.Event()

    def __call__(self, fn):
        cp = self._cupy
        cp.cuda.Device().synchronize()
        self.start.record()
        out = fn()
        self.end.record()
        cp.cuda.Device().synchronize()  # torch work may be on torch's stream
        self.end.synchronize()
        return out, cp.cuda.get_elapsed_time(self.start, self.end) / 1e3


def cpu_timer(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ environment
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str, argv=None) -> dict:
    """Device name, CPU model, versions, date and command line (``bench`` + ``argv``)."""
    import shlex

    args = sys.argv[1:] if argv is None else ["bench"] + list(argv)
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "cutrans"] + args),
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_total_bytes": _meminfo_total(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("cutrans", "numpy", "torch", "torchaudio",
                                              "warprnnt-numba", "numba", "cupy-cuda12x",
                                              "cupy-cuda13x", "matplotlib")},
    }
    env["device_name"] = env["cpu_model"]
    if device == "cuda":
        try:
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            env["device_name"] = props["name"].decode()
            env["gpu_memory_total_bytes"] = int(props["totalGlobalMem"])
            env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        except Exception as exc:  # pragma: no cover - GPU only
            env["device_name"] = f"unknown CUDA device ({exc})"
    return env


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return None
