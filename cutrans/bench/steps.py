"""What one method runs: set-up of its inputs and its forward+backward step.

``prepare(method, x, dtype, device)`` returns a ``Prepared``: ``step()`` runs one forward +
backward and returns a dict of (device) arrays by quantity name (``loss``, ``enc``,
``pred``, ``weight``, ``bias`` for the joint rows, ``logits`` for the loss-only rows and,
in the accuracy check, for the batched rows); ``summarize`` gives the full-size loss and
gradient norm (information), ``fetch`` the float64 host arrays of the accuracy check.

``x`` holds the float32 master inputs already rounded to the run's dtype
(``accuracy.round_inputs``): casting them to ``dtype`` is exact, so every method sees the
same numbers. Third-party libraries that cannot run here (an import or a NumPy API they
need fails) raise ``Unavailable`` with the reason.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._dtypes import DTYPES
from .._fused import round8
from .accuracy import np_dtype
from .methods import Method, joint_logits_numpy, valid_mask

#: row-chunk buffers of the GEMM roof (h, z, dh) at most this big
ROOF_CHUNK_BYTES = {"cpu": 512 << 20, "cuda": 2 << 30}


class Unavailable(RuntimeError):
    """A third-party method cannot run in this environment (reported, not a failure)."""


@dataclass
class Prepared:
    step: Callable[[], dict]
    warm_step: Callable[[], object]
    summarize: Callable[[dict], tuple]  # -> (loss or None, gradient norm or None)
    fetch: Callable[[dict], dict]  # -> float64 host arrays of the accuracy check
    precision: str = ""


def _host(a):
    if a is None:
        return None
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().double().numpy()
    if hasattr(a, "get"):  # cupy
        a = a.get()
    return np.asarray(a).astype(np.float64)


def _sizes(x) -> dict:
    B, T, U, V, H = x.shape
    per = x.enc_lengths.astype(np.int64) * (x.target_lengths.astype(np.int64) + 1)
    return {"batch": B, "frames": T, "labels": U, "vocab": V, "hidden": H,
            "padded_rows": B * T * (U + 1), "packed_rows": int(per.sum()),
            "max_sample_rows": int(per.max())}


def import_libraries(method: Method, device: str) -> None:
    """Import what ``prepare`` will use (before the worker's baseline RSS is read)."""
    import importlib

    importlib.import_module("cutrans")
    if device == "cuda":
        importlib.import_module("cupy")
    fam = method.family
    if fam in ("baseline", "baseline-autocast", "torchaudio", "warprnnt"):
        importlib.import_module("torch")
    if fam == "torchaudio":
        _third_party("torchaudio", lambda: __import__("torchaudio.functional"))
    elif fam == "warprnnt":
        _third_party("warprnnt-numba",
                     lambda: __import__("warprnnt_numba.rnnt_loss.rnnt_pytorch"))


def third_party_failure(dist: str, exc: BaseException) -> str:
    """A clear message for a library that fails on this NumPy (or other dependency)."""
    from .measure import _version

    text = f"{type(exc).__name__}: {exc}"
    msg = f"{dist} {_version(dist) or '?'} does not run here ({text})"
    if "row_stack" in text:
        msg += (f"; np.row_stack was removed in NumPy 2.5 (installed: {np.__version__}, "
                f"numba {_version('numba') or '?'}): it needs NumPy < 2.5")
    return msg


def _third_party(dist: str, fn):
    try:
        return fn()
    except (ImportError, AttributeError) as exc:
        raise Unavailable(third_party_failure(dist, exc)) from exc


def prepare(method: Method, x, dtype: str, device: str, *, logits=None,
            logits_grad: bool = False) -> Prepared:
    """Set up ``method`` on inputs ``x``. ``logits``: padded input logits of the loss-only
    rows (default: computed from ``x``); ``logits_grad``: batched rows also return
    dL/dlogits (the accuracy check)."""
    fam = method.family
    if fam == "gemm-roof":
        return _roof(method, x, dtype, device)
    if fam == "fused":
        return _fused(method, x, dtype, device)
    if fam in ("baseline", "baseline-autocast"):
        return _batched(method, x, dtype, device, logits_grad)
    return _logits(method, x, dtype, device, logits)


def _xp(device):
    if device == "cuda":
        import cupy

        return cupy
    return np


# ---------------------------------------------------------------------------- cutrans
def _fused(method, x, dtype, device):
    import cutrans

    from .methods import fused_chunk

    xp = _xp(device)
    dt = np_dtype(dtype)
    args = [xp.asarray(a.astype(dt)) for a in (x.enc, x.pred, x.weight, x.bias)]
    ints = [xp.asarray(a) for a in (x.targets, x.enc_lengths, x.target_lengths)]
    _, budget = fused_chunk(_sizes(x), method, dtype)

    def step():
        o = cutrans.transducer_loss(*args, *ints, max_workspace_bytes=budget,
                                    sample_wise=method.sample_wise, allow_tf32=method.tf32)
        return {"loss": o.loss, **o.grads._asdict()}

    def summarize(out):
        return float(_host(out["loss"])), float(np.linalg.norm(_host(out["weight"])))

    def fetch(out):
        return {k: _host(v) for k, v in out.items()}
    prec = f"{dtype} inputs" + (", TF32 GEMMs allowed" if method.tf32 else "")
    return Prepared(step, step, summarize, fetch, prec)


# ---------------------------------------------------------------------------- batched torch
def _batched(method, x, dtype, device, logits_grad):
    import torch

    from .baseline import joint_logits_torch, loss_on_logits

    dev = torch.device("cuda" if device == "cuda" else "cpu")
    tdt = getattr(torch, dtype)
    autocast = method.family == "baseline-autocast"
    pdt = torch.float32 if autocast else tdt
    params = [torch.from_numpy(a).to(dev, pdt).requires_grad_()
              for a in (x.enc, x.pred, x.weight, x.bias)]
    ints = [torch.from_numpy(a).to(dev) for a in (x.targets, x.enc_lengths, x.target_lengths)]
    mask = torch.from_numpy(valid_mask(x)).to(dev)

    def step():
        for p in params:
            p.grad = None
        ctx = torch.autocast(device_type=dev.type, dtype=tdt) if autocast \
            else contextlib.nullcontext()
        with ctx:
            logits = joint_logits_torch(*params)
        if logits_grad:
            logits.retain_grad()
        loss = loss_on_logits(logits, *ints)  # log_softmax + loss in float32 (float64)
        loss.backward()
        out = {"loss": loss.detach(), **{k: p.grad for k, p in
                                         zip(("enc", "pred", "weight", "bias"), params)}}
        if logits_grad:
            out["logits"] = logits.grad[mask]
        return out

    def summarize(out):
        return float(out["loss"]), float(torch.linalg.vector_norm(out["weight"].double()))

    def fetch(out):
        return {k: _host(v) for k, v in out.items()}
    prec = (f"float32 parameters, torch.autocast({dtype}), logits cast to float32 for the loss"
            if autocast else f"{dtype} inputs")
    return Prepared(step, step, summarize, fetch, prec)


# ---------------------------------------------------------------------------- loss on logits
def _logits(method, x, dtype, device, logits):
    fam = method.family
    B = x.shape[0]
    mask = valid_mask(x)
    xp = _xp(device)
    if logits is None:
        logits = joint_logits_numpy(x, xp, dtype)
    else:
        logits = xp.asarray(logits)
    if fam == "cutrans-logits":
        import cutrans

        lg = logits.astype(np_dtype(dtype), copy=False)
        ints = [xp.asarray(a) for a in (x.targets, x.enc_lengths, x.target_lengths)]

        def step():
            loss, grad = cutrans.rnnt_loss(lg, *ints, return_grad=True)
            return {"loss": loss, "logits": grad}

        def summarize(out):
            return (float(_host(out["loss"])),
                    float(np.linalg.norm(_host(out["logits"])[mask])))

        def fetch(out):
            return {"loss": _host(out["loss"]), "logits": _host(out["logits"])[mask]}
        return Prepared(step, step, summarize, fetch, f"{dtype} logits")

    import torch

    dev = torch.device("cuda" if device == "cuda" else "cpu")
    ints = [torch.from_numpy(a).to(dev).int() for a in (x.targets, x.enc_lengths,
                                                          x.target_lengths)]
    lg = torch.from_dlpack(logits) if device == "cuda" else torch.from_numpy(logits)
    del logits
    if dtype in ("float16", "bfloat16"):  # the logits every loss-only row gets
        lg = lg.to(getattr(torch, dtype))
    # warprnnt-numba takes float32/float64 only, torchaudio float32/float16: a bfloat16 run
    # gives them float32 logits holding the bfloat16 values
    ldt = {"bfloat16": torch.float32}.get(dtype, getattr(torch, dtype))
    if fam == "warprnnt":
        ldt = torch.float64 if dtype == "float64" else torch.float32
    lg = lg.to(ldt).requires_grad_()
    if fam == "torchaudio":
        taf = _third_party("torchaudio", lambda: __import__("torchaudio.functional",
                                                            fromlist=["x"]))

        def loss_fn():
            return taf.rnnt_loss(lg, *ints, blank=0, reduction="mean")
        warm_step = None
    else:
        mod = _third_party("warprnnt-numba", lambda: __import__(
            "warprnnt_numba.rnnt_loss.rnnt_pytorch", fromlist=["x"]))

        def loss_fn():
            return mod.rnnt_loss(lg, *ints, blank=0, reduction="sum") / B

        # its only warm-up effect is Numba's JIT: compile on a tiny lattice instead of
        # paying a full-size call (seconds on CPU) before the timed ones
        tiny = [torch.zeros(1, 2, 2, lg.shape[-1], device=dev, dtype=ldt, requires_grad=True),
                torch.ones(1, 1, dtype=torch.int32, device=dev),
                torch.full((1,), 2, dtype=torch.int32, device=dev),
                torch.ones(1, dtype=torch.int32, device=dev)]

        def warm_step():
            mod.rnnt_loss(*tiny, blank=0, reduction="sum").backward()

    tmask = torch.from_numpy(mask).to(dev)

    def step():
        lg.grad = None
        loss = loss_fn()
        loss.backward()
        return {"loss": loss.detach(), "logits": lg.grad}

    def summarize(out):
        return float(out["loss"]), float(torch.linalg.vector_norm(out["logits"].double()[tmask]))

    def fetch(out):
        return {"loss": _host(out["loss"]), "logits": _host(out["logits"][tmask])}
    prec = f"{str(ldt)[6:]} logits" + (" (bfloat16 values)" if dtype == "bfloat16" else "")
    return Prepared(step, warm_step or step, summarize, fetch, prec)


# ---------------------------------------------------------------------------- GEMM roof
def roof_precision(dtype: str, device: str, tf32: bool) -> tuple[str, str]:
    """``(storage dtype of the GEMM operands, description)`` of the roof row."""
    if device == "cpu":  # the NumPy backend computes in float32 (float64) for any input
        st = "float64" if dtype == "float64" else "float32"
        return st, f"{st} NumPy matmul (the NumPy backend's compute dtype)" + (
            "; no TF32 on the CPU" if tf32 else "")
    if dtype in ("float16", "bfloat16"):
        return dtype, f"{dtype} operands, float32 accumulation (CuPy matmul)"
    if dtype == "float32":
        return "float32", ("float32 operands, TF32 tensor cores (CuPy COMPUTE_TYPE_TF32)"
                           if tf32 else "float32 (CuPy matmul, TF32 off)")
    return "float64", "float64 (CuPy matmul)"


@contextlib.contextmanager
def _cupy_compute_type(tf32: bool):
    """float32 matmuls with TF32 on or off for the block (CuPy's compute-type switch,
    which ``CUPY_TF32=1`` sets process-wide), restored afterwards."""
    from cupy._core import _routines_linalg as lin

    old = lin.get_compute_type(np.float32)
    lin.set_compute_type(np.float32, lin.COMPUTE_TYPE_TF32 if tf32 else lin.COMPUTE_TYPE_DEFAULT)
    try:
        yield
    finally:
        lin.set_compute_type(np.float32, old)


def roof_chunk_rows(sizes: dict, dtype: str, device: str) -> int:
    """Rows per chunk of the roof: all packed rows if h, z, dh fit ROOF_CHUNK_BYTES."""
    H, V, R = round8(sizes["hidden"]), round8(sizes["vocab"]), sizes["packed_rows"]
    st, _ = roof_precision(dtype, device, False)
    per_row = (2 * H + V) * DTYPES[st].itemsize
    return int(max(1, min(R, ROOF_CHUNK_BYTES[device] // per_row)))


def _roof(method, x, dtype, device):
    """The three GEMMs of the fused op alone on the packed rows R = sum T_b (U_b+1):
    ``z = h W^T`` (R x H by H x V), ``dW = dz^T h``, ``dh = dz W``, in row chunks of at most
    ROOF_CHUNK_BYTES (one chunk when they fit). Operands and outputs in the roof's storage
    dtype (half types: float32 accumulation inside the GEMM); with several chunks each
    chunk's dW lands in the same buffer (the accumulation, V*H adds per chunk, is left out,
    and no elementwise half-precision kernel is needed). H and V are rounded up to multiples
    of 8 (W's padding zero; h's and z's padded columns random, which does not change the
    timing; no bias column), as the fused op pads its GEMMs: 16-byte extents and leading
    dimensions for 16-bit types, which cuBLAS's fast tensor-core kernels need (V=500 is
    not), so the roof is the best time of these products, not a misaligned one."""
    xp = _xp(device)
    sizes = _sizes(x)
    H0, V0, R = sizes["hidden"], sizes["vocab"], sizes["packed_rows"]
    H, V = round8(H0), round8(V0)
    st, prec = roof_precision(dtype, device, method.tf32)
    dt = np_dtype(st)
    C = roof_chunk_rows(sizes, dtype, device)
    rng = np.random.default_rng(0)
    h = xp.asarray(rng.standard_normal((C, H), dtype=np.float32).astype(dt))
    w_pad = np.zeros((V, H), dtype=dt)
    w_pad[:V0, :H0] = x.weight.astype(dt)
    w = xp.asarray(w_pad)
    z = xp.asarray((rng.standard_normal((C, V), dtype=np.float32) * 0.01).astype(dt))
    dh = xp.empty((C, H), dtype=dt)
    dw = xp.empty((V, H), dtype=dt)
    bounds = [(i, min(R, i + C)) for i in range(0, R, C)]
    ctx = (lambda: _cupy_compute_type(method.tf32)) if device == "cuda" and st == "float32" \
        else contextlib.nullcontext

    def step():
        with ctx():
            for a, b in bounds:
                n = b - a
                xp.matmul(h[:n], w.T, out=z[:n])  # forward logits; z stands in for dz below
                xp.matmul(z[:n].T, h[:n], out=dw)
                xp.matmul(z[:n], w, out=dh[:n])
        return {}

    return Prepared(step, step, lambda out: (None, None), lambda out: {},
                    f"{prec}; widths {H} x {V} (multiples of 8); {len(bounds)} chunk(s) of "
                    f"<= {C:,} rows")
