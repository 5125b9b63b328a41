"""``checks="device"``: a fused call with no device-to-host read; problems land in a status
word (checked by a kernel on the emulated backend, by NumPy on the NumPy backend)."""
import types

import numpy as np
import pytest

import cutrans
from cutrans import _status, _validate

BACKENDS = ["numpy", "emulated"]


def fused_case(seed=0, B=3, T=5, U=3, V=7, H=6):
    rng = np.random.default_rng(seed)
    t_len = rng.integers(1, T + 1, B)
    u_len = rng.integers(0, U + 1, B)
    t_len[0], u_len[0] = T, U
    floats = [rng.standard_normal((B, T, H)), rng.standard_normal((B, U + 1, H)),
              rng.standard_normal((V, H)) / 3, rng.standard_normal(V) / 10]
    return floats, rng.integers(1, V, (B, U)), t_len, u_len


@pytest.fixture
def host_reads(monkeypatch):
    """Counts the library's device-to-host reads (every one goes through host_read)."""
    calls = []
    real = _validate.host_read

    def counting(x):
        calls.append(type(x).__name__)
        return real(x)
    monkeypatch.setattr(_validate, "host_read", counting)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_device_checks_read_nothing_back_and_agree(host_reads, backend, reduction):
    floats, targets, t_len, u_len = fused_case()
    want = cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction=reduction,
                                   backend=backend)
    assert host_reads, "the host checks should read from the device"
    host_reads.clear()
    got = cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction=reduction,
                                  checks="device", backend=backend)
    assert host_reads == []
    assert got.status.dtype == np.int32 and got.status.shape == () and int(got.status) == 0
    np.testing.assert_array_equal(got.loss, want.loss)
    for g, w in zip(got.grads, want.grads):
        np.testing.assert_array_equal(g, w)
    # the two-pass pair with a caller-owned status word
    status = np.zeros((), np.int32)
    losses, ctx = cutrans.transducer_forward(*floats, targets, t_len, u_len, checks="device",
                                             status=status, backend=backend)
    grads = cutrans.transducer_backward(ctx, np.ones(3))
    assert host_reads == [] and int(status) == 0
    cutrans.raise_for_status(status)  # 0: nothing to raise
    assert host_reads == ["ndarray"]  # the caller's choice to read it


def test_host_checks_read_the_four_inputs_finiteness_at_once(host_reads):
    """checks="host" with host lengths and labels: one read for the four float inputs'
    finiteness flags, one for the log-likelihoods', nothing else."""
    floats, targets, t_len, u_len = fused_case()
    cutrans.transducer_loss(*floats, targets, t_len, u_len)
    assert len(host_reads) == 2 and host_reads[0] == "ndarray"  # the (4,) flags, then one
    for i, name in enumerate(["enc", "pred", "weight", "bias"]):
        bad = [x.copy() for x in floats]
        bad[i].flat[-1] = np.inf
        bad[-1][0] = np.nan if i < 3 else bad[-1][0]  # a later bad input too: the first is named
        with pytest.raises(ValueError, match=f"^{name}: expected finite values"):
            cutrans.transducer_loss(*bad, targets, t_len, u_len)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad,flag,msg", [
    (9, _status.BAD_LABEL, r"targets: a label within target_lengths is outside \[0, V\)"),
    (-3, _status.BAD_LABEL, r"outside \[0, V\)"),
    (2**32 + 3, _status.BAD_LABEL, r"outside \[0, V\)"),  # int64: not wrapped to 3
    (0, _status.BLANK_LABEL, r"the blank id appears within target_lengths")])
def test_bad_labels_are_flagged_not_crashed(backend, bad, flag, msg):
    floats, targets, t_len, u_len = fused_case()
    targets = targets.copy()
    targets[0, 1] = bad  # sample 0 has U labels: position 1 is read
    out = cutrans.transducer_loss(*floats, targets, t_len, u_len, checks="device",
                                  backend=backend)
    assert int(out.status) & flag
    with pytest.raises(ValueError, match=msg):
        cutrans.raise_for_status(out.status)
    # the host checks raise the corresponding error at once
    with pytest.raises(ValueError, match=r"targets: expected"):
        cutrans.transducer_loss(*floats, targets, t_len, u_len, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_inputs_are_flagged(backend):
    floats, targets, t_len, u_len = fused_case()
    floats[0] = floats[0].copy()
    floats[0][1, 0, 2] = np.nan
    out = cutrans.transducer_loss(*floats, targets, t_len, u_len, checks="device",
                                  backend=backend)
    assert int(out.status) == _status.NON_FINITE
    with pytest.raises(ValueError, match="a log-likelihood is not finite"):
        cutrans.raise_for_status(out.status)


def test_status_word_is_or_ed_and_checked():
    floats, targets, t_len, u_len = fused_case()
    status = np.full((), 16, np.int32)  # flags from an earlier call stay set
    cutrans.transducer_loss(*floats, targets, t_len, u_len, checks="device", status=status)
    assert int(status) == 16
    with pytest.raises(TypeError, match=r"status: expected an int32 numpy array of shape \(\)"):
        cutrans.transducer_loss(*floats, targets, t_len, u_len, checks="device",
                                status=np.zeros(1, np.int32))
    with pytest.raises(TypeError, match=r"status: checks='device' needs the caller's status"):
        cutrans.transducer_forward(*floats, targets, t_len, u_len, checks="device")
    with pytest.raises(ValueError, match=r"status: only with checks='device'"):
        cutrans.transducer_loss(*floats, targets, t_len, u_len, status=status)
    with pytest.raises(ValueError, match=r"checks: expected one of 'host', 'device'"):
        cutrans.transducer_loss(*floats, targets, t_len, u_len, checks="gpu")


def test_torch_status_word_is_written_in_place():
    torch = pytest.importorskip("torch")
    floats, targets, t_len, u_len = fused_case()
    targets = targets.copy()
    targets[0, 0] = 0
    status = torch.zeros((), dtype=torch.int32)
    out = cutrans.transducer_loss(*map(torch.from_numpy, floats), targets, t_len, u_len,
                                  checks="device", status=status)
    assert out.status is status and int(status) == _status.BLANK_LABEL


def test_jax_arrays_cannot_take_device_checks():
    """JAX arrays are immutable: no status word to OR flags into -- a TypeError, not a
    crash or silently lost flags."""
    jnp = pytest.importorskip("jax.numpy")
    floats, targets, t_len, u_len = fused_case()
    xs = [jnp.asarray(x, dtype=jnp.float32) for x in floats]
    with pytest.raises(TypeError, match="checks: 'device' .* JAX arrays are immutable"):
        cutrans.transducer_loss(*xs, targets, t_len, u_len, checks="device")


# ------------------------------------------------ checks="host" on device arrays: deferred
def _defer(monkeypatch):
    """From now on, the host checks as a device call makes them (``api._run_checked``), on
    CPU arrays."""
    from cutrans import api
    monkeypatch.setattr(api, "defers_host_checks", lambda backend: True)


@pytest.fixture
def deferred(monkeypatch):
    _defer(monkeypatch)


def _error(fn):
    with pytest.raises(ValueError) as e:
        fn()
    return str(e.value)


def _check_deferred_error(call, monkeypatch, starts: str):
    """``call()`` raises the same error with the eager and the deferred checks, and that
    error starts with ``starts``."""
    want = _error(call)
    _defer(monkeypatch)
    assert _error(call) == want
    assert want.startswith(starts)


def test_only_device_calls_defer_their_host_checks():
    from cutrans import api
    from cutrans.backends import get_backend
    assert not api.defers_host_checks(get_backend("numpy"))
    assert not api.defers_host_checks(get_backend("emulated"))
    assert api.defers_host_checks(types.SimpleNamespace(xp=types.ModuleType("cupy")))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_deferred_host_checks_read_once_and_agree(host_reads, backend, reduction,
                                                  monkeypatch):
    """One read (the status word, at the end) instead of two; the same bits."""
    floats, targets, t_len, u_len = fused_case()
    want = cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction=reduction,
                                   backend=backend)
    want_sum = cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction="sum",
                                       backend=backend)
    host_reads.clear()
    _defer(monkeypatch)
    got = cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction=reduction,
                                  backend=backend)
    assert host_reads == ["ndarray"] and got.status is None
    losses, ctx = cutrans.transducer_forward(*floats, targets, t_len, u_len, backend=backend)
    assert host_reads == ["ndarray"] * 2
    np.testing.assert_array_equal(got.loss, want.loss)
    for g, w in zip(got.grads, want.grads):
        np.testing.assert_array_equal(g, w)
    for g, w in zip(cutrans.transducer_backward(ctx, np.ones(3)), want_sum.grads):
        np.testing.assert_array_equal(g, w)


def _bad_cases():
    """(name, make) -> the fused call's arguments with one problem (or two)."""
    def label(v):
        def make(floats, targets):
            targets = targets.copy()
            targets[0, 1] = v
            return floats, targets
        return make

    def non_finite(i, value=np.nan):
        def make(floats, targets):
            floats = [x.copy() for x in floats]
            floats[i].flat[-1] = value
            return floats, targets
        return make

    def both(floats, targets):  # a bad label and a NaN: the label is named, as before
        return non_finite(0)(*label(9)(floats, targets))

    def wide(floats, targets):  # an int64 label that an int32 cast would wrap to 3
        return label(2**32 + 3)(floats, targets.astype(np.int64))

    def overflow(floats, targets):  # finite float16 inputs whose logits overflow
        floats = [x.astype(np.float16) for x in floats]
        floats[2] = (np.sign(floats[2]) * 6e4).astype(np.float16)  # |z| up to 6 * 6e4
        return floats, targets
    return {"label 9": label(9), "label -3": label(-3), "blank label": label(0),
            "enc nan": non_finite(0), "pred inf": non_finite(1, np.inf),
            "weight -inf": non_finite(2, -np.inf), "bias nan": non_finite(3),
            "label and nan": both, "float16 overflow": overflow, "label 2**32+3": wide}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", sorted(_bad_cases()))
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_deferred_host_checks_raise_the_eager_error(backend, reduction, case, monkeypatch):
    """A flagged call raises exactly what the eager host checks raise before the work."""
    floats, targets = _bad_cases()[case](*fused_case()[:2])
    _, _, t_len, u_len = fused_case()

    def call():
        return cutrans.transducer_loss(*floats, targets, t_len, u_len, reduction=reduction,
                                       backend=backend)
    _check_deferred_error(call, monkeypatch, {
        "label": "targets: expected", "blank": "targets: expected",
        "enc": "enc: expected finite", "pred": "pred: expected finite",
        "weight": "weight: expected finite", "bias": "bias: expected finite",
        "float16": "the joint logits of sample"}[case.split()[0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_deferred_host_checks_come_before_the_works_own_errors(backend, monkeypatch):
    """A bad label and a budget too small for one row: the label is named, as before the
    work (whose error comes first in the deferred order)."""
    floats, targets, t_len, u_len = fused_case()
    targets = targets.copy()
    targets[0, 1] = 9

    def call():
        return cutrans.transducer_loss(*floats, targets, t_len, u_len, max_workspace_bytes=64,
                                       backend=backend)
    want = _error(call)
    _defer(monkeypatch)
    assert _error(call) == want and want.startswith("targets: expected")
    targets[0, 1] = 1
    assert "max_workspace_bytes" in _error(call)  # good labels: the work's own error


def test_deferred_host_checks_still_check_lengths_first(deferred):
    floats, targets, t_len, u_len = fused_case()
    bad = t_len.copy()
    bad[1] = 99
    targets = targets.copy()
    targets[0, 0] = 9  # a bad label too: the lengths are checked first, at once
    with pytest.raises(ValueError, match=r"enc_lengths: expected frame counts in \[1, 5\]"):
        cutrans.transducer_loss(*floats, targets, bad, u_len)


# ------------------------------------------------ rnnt_loss on device arrays: deferred
def logits_case(seed=0, B=3, T=5, U=3, V=7):
    rng = np.random.default_rng(seed)
    t_len = rng.integers(1, T + 1, B)
    u_len = rng.integers(0, U + 1, B)
    t_len[0], u_len[0] = T, U
    return (rng.standard_normal((B, T, U + 1, V)).astype(np.float32),
            rng.integers(1, V, (B, U)), t_len, u_len)


TDT = dict(variant="tdt", durations=(0, 1, 2), omega=0.3)  # two lattices, two log-likelihoods


def _logits_call(logits, targets, t_len, u_len, backend, layout="padded", **kw):
    if layout == "packed":
        B, T, U1, V = logits.shape
        logits = np.concatenate([logits[b, :t_len[b], :u_len[b] + 1].reshape(-1, V)
                                 for b in range(B)])
    return cutrans.rnnt_loss(logits, targets, t_len, u_len, reduction="none", layout=layout,
                             return_grad=True, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("variant", ["rnnt", "tdt"])
def test_rnnt_loss_deferred_checks_read_once_and_agree(host_reads, backend, layout, variant,
                                                       monkeypatch):
    """rnnt_loss on device arrays: one read at the end (the labels checked by a kernel, the
    rows' and log-likelihoods' finiteness flagged) instead of one per check; same bits."""
    logits, targets, t_len, u_len = logits_case()
    kw = TDT if variant == "tdt" else {}
    if variant == "tdt":
        logits = _with_durations(logits)
    want = _logits_call(logits, targets, t_len, u_len, backend, layout, **kw)
    assert len(host_reads) == (3 if variant == "tdt" else 2)  # rows, then each log-likelihood
    host_reads.clear()
    _defer(monkeypatch)
    got = _logits_call(logits, targets, t_len, u_len, backend, layout, **kw)
    assert host_reads == ["ndarray"]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _bad_logits_cases():
    """(name, make) -> rnnt_loss's (logits, targets) with one problem (or two)."""
    def label(v, wide=False):
        def make(logits, targets):
            targets = targets.astype(np.int64 if wide else targets.dtype)
            targets[0, 1] = v
            return logits, targets
        return make

    def logit(value, column=3):
        def make(logits, targets):
            logits = logits.copy()
            logits[0, 2, 1, column] = value  # sample 0 has every (t, u): a valid row
            return logits, targets
        return make

    def masked_label(logits, targets):  # label y_0 impossible: no alignment of sample 0
        logits = logits.copy()
        logits[0, :, 0, targets[0, 0]] = -np.inf
        return logits, targets

    def label_and_nan(logits, targets):  # the label is named, as before
        return label(9)(*logit(np.nan)(logits, targets))

    def nan_and_masked(logits, targets):  # the rows' check comes before the lattice's
        return logit(np.nan)(*masked_label(logits, targets))
    return {"label 9": label(9), "label -3": label(-3), "blank label": label(0),
            "label 2**32+3": label(2**32 + 3, wide=True), "nan logit": logit(np.nan),
            "inf logit": logit(np.inf), "-inf blank": logit(-np.inf, column=0),
            "masked label": masked_label, "label and nan": label_and_nan,
            "nan and masked": nan_and_masked}


def _with_durations(logits):
    """TDT's logits: the token logits then 3 (finite) duration logits."""
    extra = np.random.default_rng(9).standard_normal(logits.shape[:-1] + (3,))
    return np.concatenate([logits, extra.astype(logits.dtype)], axis=-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("variant", ["rnnt", "tdt"])
@pytest.mark.parametrize("case", sorted(_bad_logits_cases()))
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_rnnt_loss_deferred_checks_raise_the_eager_error(backend, layout, variant, case,
                                                         monkeypatch):
    logits, targets = _bad_logits_cases()[case](*logits_case()[:2])
    _, _, t_len, u_len = logits_case()
    kw = {}
    if variant == "tdt":
        logits, kw = _with_durations(logits), TDT

    def call():
        return _logits_call(logits, targets, t_len, u_len, backend, layout, **kw)
    _check_deferred_error(call, monkeypatch, {
        "label": "targets: expected", "blank": "targets: expected",
        "nan": "logits: expected finite", "inf": "logits: expected finite",
        "-inf": "logits: expected finite",
        "masked": "logits: no alignment of sample 0"}[case.split()[0]])


def test_rnnt_loss_deferred_checks_come_before_the_works_own_error(deferred, monkeypatch):
    """A bad label and a work that raises: the label is named, as the eager checks do."""
    from cutrans import _orchestrate
    logits, targets, t_len, u_len = logits_case()
    targets = targets.copy()
    targets[0, 1] = 9

    def failing(*args, **kw):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(_orchestrate, "logits_forward", failing)
    with pytest.raises(ValueError, match=r"targets: expected labels in \[0, 7\), got 9"):
        _logits_call(logits, targets, t_len, u_len, "numpy")
    targets[0, 1] = 1
    with pytest.raises(RuntimeError, match="out of memory"):  # good labels: the work's own
        _logits_call(logits, targets, t_len, u_len, "numpy")


def test_rnnt_loss_deferred_checks_name_a_bad_label_before_wrong_packed_rows(monkeypatch):
    """Packed logits with a row too many and a bad label: the label is named, as eagerly."""
    logits, targets, t_len, u_len = logits_case()
    targets = targets.copy()
    targets[0, 1] = 9
    rows = int(np.sum(t_len * (u_len + 1)))

    def call():
        return cutrans.rnnt_loss(logits.reshape(-1, 7)[:rows + 1], targets, t_len, u_len,
                                 layout="packed")
    _check_deferred_error(call, monkeypatch, "targets: expected labels in [0, 7), got 9")
    targets[0, 1] = 1
    assert _error(call).startswith(f"logits: expected {rows} rows")


def test_rnnt_loss_deferred_checks_still_check_lengths_first(deferred):
    logits, targets, t_len, u_len = logits_case()
    bad = u_len.copy()
    bad[1] = 9
    targets = targets.copy()
    targets[0, 0] = 9
    with pytest.raises(ValueError, match=r"target_lengths: expected label counts in \[0, 3\]"):
        _logits_call(logits, targets, t_len, bad, "numpy")


def test_torch_rnnt_loss_deferred_checks_raise_the_eager_error(monkeypatch):
    """The torch adapter's op (CPU tensors, checks as for CUDA ones): the same errors."""
    torch = pytest.importorskip("torch")
    from cutrans.interop.torch import rnnt_loss
    logits, targets, t_len, u_len = logits_case()
    cases = _bad_logits_cases()
    for case in ("label 9", "nan logit", "masked label"):
        x, y = cases[case](logits, targets)
        args = (torch.tensor(x, requires_grad=True), torch.tensor(y), torch.tensor(t_len),
                torch.tensor(u_len))
        monkeypatch.undo()
        want = _error(lambda: rnnt_loss(*args, blank=0))
        _defer(monkeypatch)
        assert _error(lambda: rnnt_loss(*args, blank=0)) == want
