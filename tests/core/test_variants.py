"""Transducer variants (``variant=``: modified, multi-blank, TDT, delay penalty) against the
independent float64 oracles of ``tests/variant_oracle.py`` (PyTorch autograd gradients),
which are themselves checked against explicit path enumeration; the emulated kernels
against the same; identities between variants; argument validation."""
import numpy as np
import pytest

import cutrans
from cutrans._status import BLANK_LABEL



def _oracles():
    """(torch, tests/variant_oracle.py); the tests that need them skip without PyTorch."""
    torch = pytest.importorskip("torch")
    import variant_oracle
    return torch, variant_oracle

V = 7  # token logits
#: name -> variant arguments (``blank`` is drawn per case: multi-blank uses the last id)
SPECS = {
    "rnnt": {},
    "delay": {"delay_penalty": 0.3},
    "modified": {"variant": "modified"},
    "modified-delay": {"variant": "modified", "delay_penalty": 0.25},
    "multiblank": {"variant": "multiblank", "big_blank_durations": (2, 3), "sigma": 0.05},
    "multiblank-one": {"variant": "multiblank", "big_blank_durations": (4,)},
    "tdt": {"variant": "tdt", "durations": (0, 1, 2, 4)},
    "tdt-omega": {"variant": "tdt", "durations": (0, 1, 3), "sigma": 0.05, "omega": 0.3},
}


def n_logits(spec):
    return V + len(spec.get("durations", ()))


def make_case(seed, spec, B=4, T=6, U=3, blank=None):
    """Padded float64 logits (B, T, U+1, n), targets without blank symbols, lengths with the
    edges T_b = 1 and U_b = 0 (U_b <= T_b for ``modified``)."""
    rng = np.random.default_rng(seed)
    if blank is None:
        blank = V - 1 if spec.get("variant") == "multiblank" else int(rng.integers(0, V))
    n_big = len(spec.get("big_blank_durations", ()))
    blanks = {blank} | {blank - 1 - i for i in range(n_big)}
    labels = [k for k in range(V) if k not in blanks]
    t_len = rng.integers(1, T + 1, B)
    u_len = rng.integers(0, U + 1, B)
    t_len[0], u_len[0] = T, U
    if B > 2:
        t_len[1], u_len[2] = 1, 0
    if spec.get("variant") == "modified":
        u_len = np.minimum(u_len, t_len)
    logits = rng.standard_normal((B, T, U + 1, n_logits(spec))) * 1.5
    targets = rng.choice(labels, size=(B, U))
    return logits, targets, t_len, u_len, blank


def oracle(logits, targets, t_len, u_len, spec, blank, up=None):
    torch, vo = _oracles()
    x = torch.tensor(logits, requires_grad=True)
    losses = vo.recursion_loss(x, targets, t_len, u_len, spec, blank)
    up = np.ones(len(t_len)) if up is None else up
    (losses * torch.tensor(up)).sum().backward()
    return losses.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("name", list(SPECS))
def test_oracle_recursion_matches_path_enumeration(name):
    """The oracle's dynamic programme sums exactly the paths the variant defines."""
    torch, vo = _oracles()
    spec = SPECS[name]
    logits, targets, t_len, u_len, blank = make_case(1, spec, B=5, T=5, U=2)
    rec = vo.recursion_loss(torch.tensor(logits), targets, t_len, u_len, spec, blank)
    for b in range(len(t_len)):
        y = [int(k) for k in targets[b, :u_len[b]]]
        want = vo.enumerated_loss(torch.tensor(logits[b]), y, int(t_len[b]), int(u_len[b]),
                                  spec, blank)
        assert np.isclose(float(rec[b]), want, rtol=1e-12, atol=1e-12), (b, float(rec[b]), want)


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(SPECS))
def test_loss_and_gradient_match_oracle(name, seed, backend):
    spec = SPECS[name]
    logits, targets, t_len, u_len, blank = make_case(seed, spec)
    up = np.random.default_rng(seed + 10).uniform(0.5, 2, len(t_len))
    losses, ctx = cutrans.rnnt_loss_forward(logits, targets, t_len, u_len, blank=blank,
                                            backend=backend, **spec)
    grad = cutrans.rnnt_loss_backward(ctx, up)
    ref_l, ref_g = oracle(logits, targets, t_len, u_len, spec, blank, up)
    np.testing.assert_allclose(losses, ref_l, rtol=1e-11)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(SPECS))
def test_float32_and_packed_layout(name):
    """float32 logits on the emulated kernels (packed rows, clamp) against the float64
    oracle at float32 accuracy."""
    spec = SPECS[name]
    logits, targets, t_len, u_len, blank = make_case(3, spec)
    mask = (np.arange(logits.shape[1])[None, :, None] < t_len[:, None, None]) & \
        (np.arange(logits.shape[2])[None, None, :] <= u_len[:, None, None])
    packed = logits[mask].astype(np.float32)
    loss, grad = cutrans.rnnt_loss(packed, targets, t_len, u_len, blank=blank, layout="packed",
                                   reduction="sum", return_grad=True, backend="emulated",
                                   clamp=0.3, **spec)
    ref_l, ref_g = oracle(logits, targets, t_len, u_len, spec, blank)
    np.testing.assert_allclose(loss, ref_l.sum(), rtol=2e-5)
    np.testing.assert_allclose(grad, np.clip(ref_g[mask], -0.3, 0.3), atol=2e-5)


def fused_inputs(seed, spec, B=3, T=5, U=3, H=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    _, targets, t_len, u_len, blank = make_case(seed, spec, B, T, U)
    n = n_logits(spec)
    enc = rng.standard_normal((B, T, H)).astype(dtype)
    pred = rng.standard_normal((B, U + 1, H)).astype(dtype)
    weight = (rng.standard_normal((n, H)) / np.sqrt(H)).astype(dtype)
    bias = (rng.standard_normal(n) * 0.1).astype(dtype)
    return (enc, pred, weight, bias, targets, t_len, u_len), blank


def fused_oracle(case, spec, blank, up):
    torch, vo = _oracles()
    enc, pred, weight, bias, targets, t_len, u_len = case
    ts = [torch.tensor(x, requires_grad=True) for x in (enc, pred, weight, bias)]
    z = torch.tanh(ts[0][:, :, None] + ts[1][:, None]) @ ts[2].T + ts[3]
    losses = vo.recursion_loss(z, targets, t_len, u_len, spec, blank)
    (losses * torch.tensor(up)).sum().backward()
    return losses.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("path", ["one-pass", "two-pass"])
@pytest.mark.parametrize("name", list(SPECS))
def test_fused_matches_oracle(name, path):
    """The fused op with chunks of 3 rows (samples split across chunks) on both schedules."""
    from cutrans._fused import workspace_bytes
    from cutrans._topology import make_topology
    spec = SPECS[name]
    case, blank = fused_inputs(4, spec)
    args = dict(spec)
    topo = make_topology(args.pop("variant", "rnnt"), n_logits(spec), blank, **args)
    budget = workspace_bytes(*case[:3], rows_per_chunk=3, topo=topo)
    kw = dict(blank=blank, max_workspace_bytes=budget, **spec)
    if path == "one-pass":
        out = cutrans.transducer_loss(*case, reduction="sum", **kw)
        losses, grads, up = out.loss, out.grads, np.ones(3)
        ref_l, ref_g = fused_oracle(case, spec, blank, up)
        ref_l = ref_l.sum()
    else:
        up = np.array([0.5, 2.0, -1.0])
        losses, ctx = cutrans.transducer_forward(*case, **kw)
        grads = cutrans.transducer_backward(ctx, up)
        ref_l, ref_g = fused_oracle(case, spec, blank, up)
    np.testing.assert_allclose(losses, ref_l, rtol=1e-11)
    for g, r, what in zip(grads, ref_g, ("enc", "pred", "weight", "bias")):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-11, err_msg=what)


@pytest.mark.parametrize("name", ["modified", "multiblank", "tdt-omega"])
def test_fused_emulated_matches_numpy(name):
    spec = SPECS[name]
    case, blank = fused_inputs(5, spec, dtype=np.float32)
    outs = [cutrans.transducer_loss(*case, blank=blank, reduction="mean", backend=be,
                                    max_workspace_bytes=3000, **spec)
            for be in ("numpy", "emulated")]
    np.testing.assert_allclose(outs[1].loss, outs[0].loss, rtol=1e-5)
    for g, r in zip(outs[1].grads, outs[0].grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ identities
def test_multiblank_without_big_blanks_is_rnnt():
    logits, targets, t_len, u_len, blank = make_case(6, {})
    a = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                          return_grad=True)
    b = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                          return_grad=True, variant="multiblank")
    np.testing.assert_allclose(b[0], a[0], rtol=1e-13)
    np.testing.assert_allclose(b[1], a[1], atol=1e-14)


def test_tdt_omega_one_is_rnnt_on_token_logits():
    spec = dict(SPECS["tdt-omega"], omega=1.0, sigma=0.0)
    logits, targets, t_len, u_len, blank = make_case(7, spec)
    loss, grad = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank,
                                   reduction="none", return_grad=True, **spec)
    ref, ref_g = cutrans.rnnt_loss(np.ascontiguousarray(logits[..., :V]), targets, t_len, u_len,
                                   blank=blank, reduction="none", return_grad=True)
    np.testing.assert_allclose(loss, ref, rtol=1e-13)
    np.testing.assert_allclose(grad[..., :V], ref_g, atol=1e-14)
    assert np.all(grad[..., V:] == 0)


def test_modified_with_one_label_per_frame_has_one_path():
    """U_b = T_b: every frame emits its label, the only alignment."""
    spec = SPECS["modified"]
    logits, targets, _, _, blank = make_case(8, spec, B=2, T=4, U=4)
    t_len = u_len = np.array([4, 3])
    loss = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                             variant="modified")
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = [-sum(lp[b, t, t, targets[b, t]] for t in range(t_len[b])) for b in range(2)]
    np.testing.assert_allclose(loss, want, rtol=1e-13)


def test_fastemit_scales_the_reported_loss_of_every_variant():
    for name in ("modified", "multiblank"):
        spec = SPECS[name]
        logits, targets, t_len, u_len, blank = make_case(9, spec)
        a = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                              **spec)
        b = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                              fastemit_lambda=0.5, **spec)
        np.testing.assert_allclose(b, 1.5 * a, rtol=1e-13)


# ------------------------------------------------------------------ device-side checks
@pytest.mark.parametrize("backend", ["numpy", "emulated"])
def test_device_checks_flag_a_big_blank_label(backend):
    spec = SPECS["multiblank"]
    case, blank = fused_inputs(10, spec, dtype=np.float32)
    targets = case[4].copy()
    targets[0, 0] = blank - 2  # the second big blank
    status = np.zeros((), np.int32)
    cutrans.transducer_loss(*case[:4], targets, *case[5:], blank=blank, checks="device",
                            status=status, backend=backend, **spec)
    assert int(status) == BLANK_LABEL
    with pytest.raises(ValueError, match="blank"):
        cutrans.raise_for_status(status)


# ------------------------------------------------------------------ validation
def _call(**kw):
    spec = kw.pop("spec", {})
    logits, targets, t_len, u_len, blank = make_case(11, spec)
    args = dict(blank=blank, **spec)
    args.update(kw)
    return cutrans.rnnt_loss(logits, targets, t_len, u_len, **args)


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(variant="bogus"), ValueError, "variant"),
    (dict(variant=1), TypeError, "variant"),
    (dict(durations=[0, 1]), ValueError, "durations: not an argument of variant='rnnt'"),
    (dict(sigma=0.1), ValueError, "sigma: not an argument of variant='rnnt'"),
    (dict(variant="modified", omega=0.5), ValueError, "omega: not an argument"),
    (dict(variant="multiblank", delay_penalty=0.1), ValueError, "delay_penalty: not an arg"),
    (dict(delay_penalty=-1.0), ValueError, "delay_penalty"),
    (dict(variant="tdt"), ValueError, "durations: variant='tdt' needs"),
    (dict(variant="tdt", durations=[1, 2]), ValueError, "containing 0 and 1"),
    (dict(variant="tdt", durations=[0, 1, 1]), ValueError, "distinct"),
    (dict(variant="tdt", durations=[0, 1, 1.5]), TypeError, "durations: expected ints"),
    (dict(variant="tdt", durations="01"), TypeError, "durations: expected a sequence"),
    (dict(variant="tdt", durations=list(range(31))), ValueError, "at most 30"),
    (dict(variant="tdt", durations=[0, 1], omega=1.5), ValueError, "omega"),
    (dict(variant="tdt", durations=[0, 1], sigma=-0.1), ValueError, "sigma"),
    (dict(variant="tdt", durations=[0, 1], fastemit_lambda=0.1), ValueError,
     "fastemit_lambda: not defined for variant='tdt'"),
    (dict(variant="multiblank", big_blank_durations=[1]), ValueError, "big_blank_durations"),
    (dict(variant="multiblank", big_blank_durations=[2, 3], blank=1), ValueError,
     "big_blank_durations: 2 big blanks"),
])
def test_bad_variant_arguments_name_the_argument(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        _call(**kw)


def test_tdt_needs_token_logits_and_labels_among_them():
    logits, targets, t_len, u_len, _ = make_case(12, {})
    with pytest.raises(ValueError, match="durations: 6 duration logits leave 1 token"):
        cutrans.rnnt_loss(logits, targets, t_len, u_len, variant="tdt",
                          durations=[0, 1, 2, 3, 4, 5])
    targets = targets.copy()
    targets[0, 0] = V - 1  # a duration logit's index, not a token
    with pytest.raises(ValueError, match=r"targets: expected labels in \[0, 5\)"):
        cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=0, variant="tdt",
                          durations=[0, 1])


def test_multiblank_label_equal_to_a_big_blank_is_rejected():
    spec = SPECS["multiblank"]
    logits, targets, t_len, u_len, blank = make_case(13, spec)
    targets = targets.copy()
    targets[0, 1] = blank - 1
    with pytest.raises(ValueError, match=r"^targets: expected no blank symbol \[6, 5, 4\] within "
                                         r"target_lengths, found 5 at sample 0, position 1$"):
        cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, **spec)


def test_modified_needs_no_more_labels_than_frames():
    logits, targets, t_len, u_len, blank = make_case(14, {})
    t_len = np.array([2, 1, 6, 6])
    u_len = np.array([3, 0, 1, 2])
    with pytest.raises(ValueError, match="target_lengths: variant='modified'.*sample 0"):
        cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, variant="modified")


# ------------------------------------------------------------------ more checks
@pytest.mark.parametrize("name", list(SPECS))
def test_gradient_matches_float64_finite_differences(name):
    """Central differences of the loss sum on 12 random logits (plus every duration logit's
    first entry for TDT): independent of autograd."""
    spec = SPECS[name]
    logits, targets, t_len, u_len, blank = make_case(20, spec, B=2, T=4, U=2)
    t_len, u_len = np.array([4, 3]), np.array([2, 1])

    def total(x):
        return float(cutrans.rnnt_loss(x, targets, t_len, u_len, blank=blank, reduction="sum",
                                       **spec))
    _, grad = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="sum",
                                return_grad=True, **spec)
    rng = np.random.default_rng(21)
    picks = [(b, int(rng.integers(0, t_len[b])), int(rng.integers(0, u_len[b] + 1)),
              int(rng.integers(0, logits.shape[-1]))) for b in rng.integers(0, 2, 12)]
    picks += [(0, 0, 0, k) for k in range(V, logits.shape[-1])]
    h = 1e-6
    for i in picks:
        x = logits.copy()
        x[i] += h
        up = total(x)
        x[i] -= 2 * h
        fd = (up - total(x)) / (2 * h)
        assert abs(fd - grad[i]) <= 1e-6 + 1e-6 * abs(fd), (i, fd, grad[i])


def test_zero_delay_penalty_changes_nothing():
    for variant in ("rnnt", "modified"):
        logits, targets, t_len, u_len, blank = make_case(22, {"variant": variant})
        a = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                              return_grad=True, variant=variant)
        b = cutrans.rnnt_loss(logits, targets, t_len, u_len, blank=blank, reduction="none",
                              return_grad=True, variant=variant, delay_penalty=0.0)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _np_dtype(name):
    if name == "bfloat16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return np.dtype(name)


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["modified-delay", "multiblank", "tdt-omega"])
def test_16_bit_logits(name, dtype, backend):
    """16-bit logits, float32 math: the float64 result of the same (rounded) logits, up to
    float32 rounding of the loss and one 16-bit rounding of the gradient."""
    spec = SPECS[name]
    logits, targets, t_len, u_len, blank = make_case(23, spec)
    low = logits.astype(_np_dtype(dtype))
    ref, ref_g = cutrans.rnnt_loss(low.astype(np.float64), targets, t_len, u_len, blank=blank,
                                   reduction="none", return_grad=True, **spec)
    got, g = cutrans.rnnt_loss(low, targets, t_len, u_len, blank=blank, reduction="none",
                               return_grad=True, backend=backend, **spec)
    assert got.dtype == np.float32 and g.dtype == low.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    ulp = 2.0 ** (-8 if dtype == "bfloat16" else -11)
    np.testing.assert_allclose(g.astype(np.float64), ref_g, atol=ulp, rtol=ulp)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_fused_tdt(dtype):
    """The fused TDT op on 16-bit inputs (logits kept in 16 bits, float32 math) against
    float64 on the same inputs: the precision of 16-bit storage."""
    spec = SPECS["tdt-omega"]
    case, blank = fused_inputs(24, spec)
    low = [x.astype(_np_dtype(dtype)) for x in case[:4]]
    ref = cutrans.transducer_loss(*[x.astype(np.float64) for x in low], *case[4:], blank=blank,
                                  **spec)
    for backend in ("numpy", "emulated"):
        out = cutrans.transducer_loss(*low, *case[4:], blank=blank, backend=backend, **spec)
        tol = 2e-2 if dtype == "bfloat16" else 3e-3
        np.testing.assert_allclose(out.loss, ref.loss, rtol=tol)
        for g, r in zip(out.grads, ref.grads):
            assert g.dtype == low[0].dtype
            err = np.abs(g.astype(np.float64) - r).max() / np.abs(r).max()
            assert err <= 4 * tol, err
