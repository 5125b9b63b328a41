"""Bad-input fuzzing: valid calls with 1-3 random malformations (wrong types, shapes, dtypes,
NaN/inf, negative or oversized lengths, out-of-range labels, bad scalars and options).

Property: the call raises ``ValueError``/``TypeError`` whose message names an argument, or
(for a malformation that may be legal, e.g. a strided view or a -inf-masked label) returns
finite results; never another exception, a crash (that kills the run) or a hang (a
watchdog ends the process after ``HANG_S`` seconds with every thread's traceback).
"""
import faulthandler
import re

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, note, seed, settings, strategies as st  # noqa: E402

import cutrans  # noqa: E402
from fuzz_cases import lattices  # noqa: E402
from fuzz_settings import FUZZ_SEED, examples  # noqa: E402

HANG_S = 120
ARG_NAMES = ("logits", "targets", "logit_lengths", "target_lengths", "blank", "clamp",
             "fastemit_lambda", "reduction", "layout", "backend", "enc", "pred", "weight",
             "bias", "enc_lengths", "activation", "max_workspace_bytes", "grad_losses")
BACKENDS = st.sampled_from(["numpy", "numpy", "numpy", "emulated"])
NOT_ARRAYS = st.sampled_from([None, 3.0, "abc", [[1.0, 2.0]], (1, 2), {"a": 1}, object()])
BAD_FLOAT_DTYPES = st.sampled_from(["int32", "int64", "bool", "complex64", "uint8", "object",
                                    "longdouble", "float16x"])
BAD_INDEX_DTYPES = st.sampled_from(["float32", "float64", "bool", "uint8", "uint32", "int16",
                                    "complex64", "object"])
BAD_INTS = st.sampled_from([2**62, -2**62, 2**40, -(2**31), 2**31])


def bad_dtype(x, name):
    """An array of x's shape in a wrong dtype (the values do not matter: the dtype is
    checked first)."""
    if name == "float16x":  # a structured dtype
        return np.zeros(x.shape, dtype=[("a", np.float16)])
    return np.ones(x.shape, dtype=np.dtype(name))


def sample_with(lat, cond):
    """First sample index b with cond(b), or None."""
    idx = [b for b in range(lat.B) if cond(b)]
    return idx[0] if idx else None


# ------------------------------------------------------------------ mutations
# each: (draw, args dict, lat) -> True when the result must be an error, False if it may pass

def m_array_type(draw, a, lat, names):
    a[draw(st.sampled_from(names))] = draw(NOT_ARRAYS)
    return True


def m_float_dtype(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    a[k] = bad_dtype(a[k], draw(BAD_FLOAT_DTYPES))
    return True


def m_index_dtype(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    a[k] = bad_dtype(np.asarray(a[k]), draw(BAD_INDEX_DTYPES))
    return True


def m_ndim(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    x = a[k]
    a[k] = x[..., None] if draw(st.booleans()) or x.ndim == 0 or x.shape[0] == 0 else x[0]
    return None  # decided by the final shapes (see ``shapes_wrong``)


def m_dim_size(draw, a, lat, names):
    """Grow or shrink one dimension of an array so it disagrees with the others."""
    k = draw(st.sampled_from(names))
    x = a[k]
    if x.ndim == 0:
        return m_ndim(draw, a, lat, [k])
    axis = draw(st.integers(0, x.ndim - 1))
    n = x.shape[axis]
    new = draw(st.sampled_from([n + 1, n + 3] + ([n - 1] if n > 0 else [])))
    if new > n:
        extra = np.take(x, [0] * (new - n), axis=axis) if n else np.zeros(
            x.shape[:axis] + (new,) + x.shape[axis + 1:], x.dtype)
        a[k] = np.concatenate([x, extra], axis=axis)
    else:
        a[k] = np.take(x, range(new), axis=axis)
    return None  # decided by the final shapes (see ``shapes_wrong``)


def shapes_wrong(op, a):
    """True if the (possibly mutated) array shapes cannot be legal together (the shape
    rules of the API docstrings); None when an array is no longer an array (another
    mutation decides)."""
    keys = (["logits"] if op == "logits" else ["enc", "pred", "weight", "bias"]) + [
        "targets", "logit_lengths" if op == "logits" else "enc_lengths", "target_lengths"]
    if not all(isinstance(a[k], np.ndarray) for k in keys):
        return None
    x, y, tl, ul = a[keys[0]], a["targets"], a[keys[-2]], a[keys[-1]]
    if y.ndim != 2 or tl.ndim != 1 or ul.ndim != 1:
        return True
    B = y.shape[0]
    ok = tl.shape == (B,) and ul.shape == (B,) and B >= 1
    if op == "logits":
        ok = ok and x.ndim == 4 and x.shape[0] == B and x.shape[2] == y.shape[1] + 1
        T = x.shape[1] if x.ndim == 4 else 0
    else:
        p, w, b = a["pred"], a["weight"], a["bias"]
        ok = ok and (x.ndim, p.ndim, w.ndim, b.ndim) == (3, 3, 2, 1)
        ok = ok and x.shape[0] == p.shape[0] == B and x.shape[2] == p.shape[2] == w.shape[1]
        ok = ok and p.shape[1] == y.shape[1] + 1 and b.shape[0] == w.shape[0]
        T = x.shape[1] if x.ndim == 3 else 0
    if not ok:
        return True
    return bool(tl.max() > T or ul.max() > y.shape[1] or tl.min() < 1 or ul.min() < 0)


def m_length(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    if np.shape(a[k]) != (lat.B,) or a[k].dtype not in (np.int32, np.int64):
        return False
    x = np.array(a[k])
    b = draw(st.integers(0, lat.B - 1))
    if k in ("logit_lengths", "enc_lengths"):
        x[b] = draw(st.sampled_from([0, -1, lat.T + 1, lat.T + 50]))
    else:
        x[b] = draw(st.sampled_from([-1, -7, lat.U + 1, lat.U + 50]))
    a[k] = x
    return True


def m_length_huge(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    if np.shape(a[k]) != (lat.B,) or a[k].dtype.kind not in "iu":
        return False
    x = np.array(a[k], dtype=np.int64)
    x[draw(st.integers(0, lat.B - 1))] = draw(BAD_INTS)
    a[k] = x
    return True


def m_lengths_as_list(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    a[k] = a[k].tolist()
    return True


def m_label(draw, a, lat, names):
    """An invalid label (out of [0, V), or blank) at a valid target position."""
    b = sample_with(lat, lambda b: lat.u_len[b] > 0)
    if b is None or np.shape(a["targets"]) != (lat.B, lat.U) or a["targets"].dtype.kind != "i":
        return False
    y = np.array(a["targets"], dtype=np.int64)
    u = draw(st.integers(0, int(lat.u_len[b]) - 1))
    y[b, u] = draw(st.sampled_from([lat.V, lat.V + 9, -1, -lat.V - 1, lat.blank_id, 2**40]))
    a["targets"] = y
    return True


def m_scalar(draw, a, lat, names):
    k = draw(st.sampled_from(names))
    bad = {"blank": [lat.V, -lat.V - 1, 1.0, True, "0", None, 2**70, float("nan")],
           "clamp": [float("nan"), float("inf"), "0.1", True, 1j],
           "fastemit_lambda": [-0.5, float("nan"), float("inf"), "0", None, False],
           "reduction": ["avg", "", None, "Mean", 1],
           "layout": ["ragged", None, 0],
           "activation": ["gelu", None, 0, "Tanh"],
           "max_workspace_bytes": [0, -1, 1, 1.5e9, True, "1e9", None],
           "backend": ["tpu", "", "cuda", "Numpy", 1, b"numpy"]}[k]
    # unusual but legal: clamp <= 0 disables clamping (torchaudio's rule, api docstring)
    legal = {"clamp": [-1.0, -1e-9]}.get(k, [])
    a[k], must = draw(st.sampled_from([(x, True) for x in bad] + [(x, False) for x in legal]))
    return must


def m_nonfinite(draw, a, lat, names):
    """NaN/inf where it is read: a valid lattice position (logits) or anywhere (fused)."""
    k = draw(st.sampled_from(names))
    x = np.array(a[k])
    if x.dtype.kind != "f" or x.size == 0 or (
            k == "logits" and x.shape != (lat.B, lat.T, lat.U + 1, lat.V)):
        return False
    b = draw(st.integers(0, lat.B - 1))
    vals = [np.nan, np.inf, -np.inf]
    val = draw(st.sampled_from(vals))
    if k == "logits":
        t = draw(st.integers(0, int(lat.t_len[b]) - 1))
        u = draw(st.integers(0, int(lat.u_len[b])))
        kind = draw(st.sampled_from(["one", "blank", "row"]))
        if kind == "row":
            x[b, t, u, :] = -np.inf
        elif kind == "blank":
            x[b, t, u, lat.blank_id] = -np.inf
        else:
            k_ = draw(st.integers(0, lat.V - 1))
            x[b, t, u, k_] = val
            # -inf at a label masks it: legal unless it removes every alignment
            if val == -np.inf and k_ != lat.blank_id:
                a[k] = x
                return False
    else:
        x.flat[draw(st.integers(0, x.size - 1))] = val
    a[k] = x
    return True


def m_strided(draw, a, lat, names):
    """A non-contiguous view of the same values (legal)."""
    k = draw(st.sampled_from(names))
    x = a[k]
    if x.ndim == 0:
        return False
    big = np.repeat(x, 2, axis=-1)
    a[k] = big[..., ::2]
    return False


LOGITS_MUTATIONS = [
    (m_array_type, ["logits", "targets", "logit_lengths", "target_lengths"]),
    (m_float_dtype, ["logits"]),
    (m_index_dtype, ["targets", "logit_lengths", "target_lengths"]),
    (m_ndim, ["logits", "targets", "logit_lengths", "target_lengths"]),
    (m_dim_size, ["logits", "targets", "logit_lengths", "target_lengths"]),
    (m_length, ["logit_lengths", "target_lengths"]),
    (m_length_huge, ["logit_lengths", "target_lengths"]),
    (m_lengths_as_list, ["logit_lengths", "target_lengths"]),
    (m_label, None),
    (m_scalar, ["blank", "clamp", "fastemit_lambda", "reduction", "layout", "backend"]),
    (m_nonfinite, ["logits"]),
    (m_strided, ["logits", "targets"]),
]

FUSED_MUTATIONS = [
    (m_array_type, ["enc", "pred", "weight", "bias", "targets", "enc_lengths",
                    "target_lengths"]),
    (m_float_dtype, ["enc", "pred", "weight", "bias"]),
    (m_index_dtype, ["targets", "enc_lengths", "target_lengths"]),
    (m_ndim, ["enc", "pred", "weight", "bias", "targets", "enc_lengths", "target_lengths"]),
    (m_dim_size, ["enc", "pred", "weight", "bias", "targets", "enc_lengths",
                  "target_lengths"]),
    (m_length, ["enc_lengths", "target_lengths"]),
    (m_length_huge, ["enc_lengths", "target_lengths"]),
    (m_lengths_as_list, ["enc_lengths", "target_lengths"]),
    (m_label, None),
    (m_scalar, ["blank", "clamp", "fastemit_lambda", "reduction", "activation",
                "max_workspace_bytes", "backend"]),
    (m_nonfinite, ["enc", "pred", "weight", "bias"]),
    (m_strided, ["enc", "pred", "weight", "bias", "targets"]),
]


def valid_logits_args(lat, rng, dtype):
    z = rng.standard_normal((lat.B, lat.T, lat.U + 1, lat.V)).astype(dtype)
    t_len, u_len = lat.lengths()
    return dict(logits=z, targets=lat.targets(), logit_lengths=t_len, target_lengths=u_len,
                blank=lat.blank, clamp=None, fastemit_lambda=0.0, reduction="mean",
                layout="padded")


def valid_fused_args(lat, rng, dtype, H):
    t_len, u_len = lat.lengths()
    return dict(enc=rng.standard_normal((lat.B, lat.T, H)).astype(dtype),
                pred=rng.standard_normal((lat.B, lat.U + 1, H)).astype(dtype),
                weight=rng.standard_normal((lat.V, H)).astype(dtype),
                bias=rng.standard_normal(lat.V).astype(dtype), targets=lat.targets(),
                enc_lengths=t_len, target_lengths=u_len, blank=lat.blank, clamp=None,
                fastemit_lambda=0.0, reduction="mean", activation="tanh",
                max_workspace_bytes=1 << 16)


@st.composite
def malformed(draw, op):
    lat = draw(lattices(max_B=3, max_T=4, max_U=3, max_V=6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = lat.rng
    if op == "logits":
        args, table = valid_logits_args(lat, rng, dtype), LOGITS_MUTATIONS
    else:
        args, table = valid_fused_args(lat, rng, dtype, draw(st.integers(1, 5))), FUSED_MUTATIONS
    args["backend"] = draw(BACKENDS)
    shapes = {k: v.shape for k, v in args.items() if isinstance(v, np.ndarray)}
    V = lat.V
    must, applied, scalars_done = False, [], set()
    for _ in range(draw(st.integers(1, 3))):
        fn, names = draw(st.sampled_from(table))
        if fn is m_scalar:  # each scalar once: a legal second value would hide a bad first
            names = [k for k in names if k not in scalars_done]
        elif names is not None:  # arrays only (an earlier mutation may have replaced one
            names = [k for k in names if isinstance(args[k], np.ndarray)]  # with a non-array)
        if names is not None and not names:
            continue
        before = dict(args)
        must |= bool(fn(draw, args, lat, names))
        applied.append(fn.__name__)
        if fn is m_scalar:
            scalars_done |= {k for k in names if args[k] is not before[k]}
    applied += [f"{k}: shape {old} -> {np.shape(args[k])}" for k, old in shapes.items()
                if np.shape(args[k]) != old]
    wrong = shapes_wrong(op, args)
    if wrong is False:
        vocab = args["logits"].shape[-1] if op == "logits" else args["weight"].shape[0]
        if vocab != V:  # legal shapes with another vocabulary: whether the labels, the
            return args, False, applied  # blank and the other mutations fit it varies
    return args, must or bool(wrong), applied


def call(op, args):
    if op == "logits":
        loss, grad = cutrans.rnnt_loss(**args, return_grad=True)
        return [loss, grad]
    out = cutrans.transducer_loss(**args)
    return [out.loss, *out.grads]


def check(op, args, must, applied):
    note(f"mutations: {applied}; must raise: {must}")
    faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang ends the run, loudly
    try:
        outs = call(op, args)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert any(re.search(rf"\b{n}\b", msg) for n in ARG_NAMES), \
            f"message names no argument: {msg!r}"
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not must, f"accepted an invalid input ({applied})"
    for x in outs:  # a legal call: finite results, never a silent NaN
        assert np.isfinite(np.asarray(x, dtype=np.float64)).all(), applied


@seed(FUZZ_SEED)
@settings(max_examples=examples(500))
@given(case=malformed("logits"))
def test_logits_op_bad_inputs(case):
    check("logits", *case)


@seed(FUZZ_SEED)
@settings(max_examples=examples(500))
@given(case=malformed("fused"))
def test_fused_op_bad_inputs(case):
    check("fused", *case)


@pytest.mark.parametrize("op", ["logits", "fused"])
@seed(FUZZ_SEED)
@settings(max_examples=examples(300))
@given(data=st.data())
def test_bad_inputs_with_the_checks_of_device_arrays(op, data):
    """The same property with the host checks as a GPU call makes them (labels and
    NaN/inf flagged on the device during the work, read once at the end:
    ``api._run_checked``), on the CPU backends; and the same error as the eager checks."""
    from cutrans import api
    args, must, applied = data.draw(malformed(op))
    eager = _outcome(op, args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "defers_host_checks", lambda backend: True)
        check(op, args, must, applied)
        assert _outcome(op, args) == eager, applied


def _outcome(op, args):
    """The error a call raises (type and text), or None."""
    try:
        call(op, args)
    except (ValueError, TypeError) as e:
        return type(e).__name__, str(e)
    return None


@pytest.mark.parametrize("op", ["logits", "fused"])
def test_backward_bad_upstream(op):
    """grad_losses of the wrong shape or type: ValueError/TypeError naming it."""
    rng = np.random.default_rng(0)
    from fuzz_cases import Lattice
    lat = Lattice(B=2, t_len=np.array([3, 1]), u_len=np.array([1, 0]), T=3, U=1, V=4, blank=0,
                  rng=rng)
    if op == "logits":
        args = valid_logits_args(lat, rng, np.float64)
        for k in ("reduction",):
            args.pop(k)
        _, ctx = cutrans.rnnt_loss_forward(**args)
        backward = cutrans.rnnt_loss_backward
    else:
        args = valid_fused_args(lat, rng, np.float64, 3)
        args.pop("reduction")
        _, ctx = cutrans.transducer_forward(**args)
        backward = cutrans.transducer_backward
    for bad in (np.ones(3), np.ones((2, 1)), 1.0, np.ones(0), "x", [1.0], None):
        with pytest.raises((ValueError, TypeError), match=r"grad_losses|could not convert|"
                           r"float\(\) argument"):
            backward(ctx, bad)
