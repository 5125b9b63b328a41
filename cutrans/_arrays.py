"""The array boundary of the public API: any DLPack array in, the same kind of array out.

``boundary(floats, ints)`` looks at the caller's arrays and returns a ``Boundary`` that
converts them to the core's arrays -- NumPy on the CPU, CuPy on a CUDA device -- and the
results back to the caller's kind, on the same device:

* NumPy and CuPy arrays pass through untouched;
* other arrays go through DLPack (``__dlpack__`` / ``__dlpack_device__``: PyTorch, JAX,
  and any Array-API library), zero-copy both ways, with DLPack's stream handshake on a GPU
  (the consumer's stream waits for the producer's). bfloat16, which DLPack consumers of
  NumPy do not accept, travels as a 16-bit integer view where the framework allows it
  (PyTorch); otherwise through ``numpy.asarray`` (JAX on the CPU: a read-only view);
* results go back with the caller's framework: ``torch.from_dlpack``, JAX
  (``jax.numpy.asarray`` on the CPU -- a copy, because ``jax.numpy.from_dlpack`` of
  NumPy memory can hang jaxlib 0.10 at exit -- and ``jax.dlpack.from_dlpack`` on a GPU),
  or the array's ``__array_namespace__().from_dlpack``.

Device: a call runs on the device of its data (``cupy.cuda.Device(id)`` around the core's
work, so its kernel cache and its current stream are that device's); the caller's current
device is restored afterwards.

Rules: the float inputs share one kind and one device; integer inputs (targets, lengths)
have that kind and device too, or are host arrays (NumPy, or any CPU array): host lengths
with device data are how a caller avoids a device-to-host copy. Anything else is a
``TypeError`` naming the argument.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13  # DLPack device types


def _module(x) -> str:
    return type(x).__module__.split(".")[0]


def _native(x) -> bool:
    return isinstance(x, np.ndarray) or (_module(x) == "cupy" and hasattr(x, "data"))


def _device(x) -> tuple[str, int]:
    """("cpu", 0) or ("cuda", id) of an array."""
    if isinstance(x, np.ndarray):
        return ("cpu", 0)
    if _module(x) == "cupy":
        return ("cuda", int(x.device.id))
    if hasattr(x, "__dlpack_device__"):
        kind, dev = x.__dlpack_device__()
        kind = int(kind)
        if kind == _CPU:
            return ("cpu", 0)
        if kind in (_CUDA, _CUDA_MANAGED):
            return ("cuda", int(dev))
        raise TypeError(f"unsupported DLPack device type {kind}")
    if hasattr(x, "__cuda_array_interface__"):  # e.g. Numba device arrays
        import cupy
        return ("cuda", int(cupy.asarray(x).device.id))
    raise TypeError("not an array")


def _kind(x) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    m = _module(x)
    return "jax" if m == "jaxlib" else m


def _bf16(x) -> bool:
    return str(getattr(x, "dtype", "")).endswith("bfloat16")


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    if _kind(x) == "torch":
        t = x.detach().resolve_conj().resolve_neg()
        if _bf16(t):
            from ._dtypes import DTYPES
            return np.from_dlpack(t.view(_torch_int16())).view(DTYPES["bfloat16"][0])
        return np.from_dlpack(t)
    if _bf16(x) or not hasattr(x, "__dlpack__"):
        return np.asarray(x)
    return np.from_dlpack(x)


def _torch_int16():
    import torch
    return torch.int16


def _to_cupy(x):
    import cupy
    if _module(x) == "cupy":
        return x
    if _kind(x) == "torch":
        t = x.detach().resolve_conj().resolve_neg()
        if _bf16(t):
            from ._dtypes import DTYPES
            return cupy.from_dlpack(t.view(_torch_int16())).view(DTYPES["bfloat16"][0])
        return cupy.from_dlpack(t)
    if hasattr(x, "__dlpack__"):
        return cupy.from_dlpack(x)
    return cupy.asarray(x)  # __cuda_array_interface__


@dataclass(frozen=True)
class Boundary:
    """The caller's array kind and device; converts inputs in and results out."""

    kind: str  # "numpy", "cupy", "torch", "jax", ... (module of the float inputs)
    device: tuple  # ("cpu", 0) | ("cuda", id)
    example: Any = None  # one caller array (for its namespace)

    @property
    def native(self) -> bool:
        return self.kind in ("numpy", "cupy")

    def to_core(self, x):
        """A NumPy (CPU) or CuPy (CUDA) view of a caller array; host arrays of integer
        arguments stay on the host."""
        if x is None or _native(x):
            return x
        if _device(x)[0] == "cpu":
            return _to_numpy(x)
        return _to_cupy(x)

    def from_core(self, a):
        """A core result (NumPy/CuPy array or None) as the caller's kind of array."""
        if a is None or self.native:
            return a
        if self.kind == "torch":
            import torch
            if _bf16(a):
                return torch.from_dlpack(a.view(np.int16)).view(torch.bfloat16)
            return torch.from_dlpack(a)
        if self.kind == "jax":
            if self.device[0] == "cpu":
                import jax.numpy as jnp
                return jnp.asarray(a)
            import jax.dlpack
            return jax.dlpack.from_dlpack(a)
        return self.example.__array_namespace__().from_dlpack(a)


    def scope(self):
        """A context running the core on this boundary's device (see ``device_scope``)."""
        return device_scope(self.device)


NATIVE = Boundary("numpy", ("cpu", 0))


def device_scope(device):
    """``cupy.cuda.Device(id)`` for ("cuda", id) (restores the current device), else a no-op."""
    if device[0] != "cuda":
        return contextlib.nullcontext()
    import cupy
    return cupy.cuda.Device(device[1])


def on_data_device(fn):
    """Run ``fn`` on the device of its first parameter's argument (an array of any kind)."""
    first = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        x = args[0] if args else kwargs.get(first)
        try:
            device = _device(x)
        except (TypeError, AttributeError):  # not an array: fn's validation says so
            device = ("cpu", 0)
        with device_scope(device):
            return fn(*args, **kwargs)
    return wrapper


def boundary(floats, ints=()) -> Boundary:
    """The boundary of a call; ``floats``/``ints``: ``(name, array)`` pairs (see module doc).

    Raises ``TypeError`` naming the first argument whose kind or device differs.
    """
    first_name, first = floats[0]
    kind, device = _checked(first_name, first)
    int_names = {name for name, _ in ints}
    for name, x in list(floats[1:]) + list(ints):
        k, d = _checked(name, x)
        host_int = name in int_names and d[0] == "cpu"
        if (k != kind or d != device) and not host_int:
            raise TypeError(f"{name}: expected a {kind} array on {_where(device)} like "
                            f"{first_name}, got a {k} array on {_where(d)}")
    if kind not in ("numpy", "cupy", "torch", "jax") and \
            not hasattr(first, "__array_namespace__"):
        raise TypeError(f"{first_name}: cannot return results as {kind} arrays (no "
                        f"__array_namespace__); pass NumPy, CuPy, PyTorch or JAX arrays")
    return Boundary(kind, device, first)


def _where(device) -> str:
    return "the CPU" if device[0] == "cpu" else f"CUDA device {device[1]}"


def _checked(name, x):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if not (_native(x) or hasattr(x, "__dlpack__") or hasattr(x, "__cuda_array_interface__")):
        raise TypeError(f"{name}: expected an array supporting DLPack (__dlpack__), got "
                        f"{type(x).__module__}.{type(x).__name__}")
    try:
        return _kind(x), _device(x)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
