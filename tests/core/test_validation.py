"""Every bad input gets a ValueError/TypeError naming the argument and the values."""
import numpy as np
import pytest

import cutrans


def logits_args(**over):
    rng = np.random.default_rng(0)
    args = dict(logits=rng.standard_normal((2, 4, 3, 5)).astype(np.float32),
                targets=np.array([[1, 2], [3, 0]], np.int32),
                logit_lengths=np.array([4, 2], np.int32),
                target_lengths=np.array([2, 1], np.int32))
    args.update(over)
    return args


def fused_args(**over):
    rng = np.random.default_rng(0)
    args = dict(enc=rng.standard_normal((2, 4, 3)), pred=rng.standard_normal((2, 3, 3)),
                weight=rng.standard_normal((5, 3)), bias=rng.standard_normal(5),
                targets=np.array([[1, 2], [3, 0]]), enc_lengths=np.array([4, 2]),
                target_lengths=np.array([2, 1]))
    args.update(over)
    return args


def call_logits(**over):
    kw = {k: over.pop(k) for k in list(over) if k not in logits_args()}
    return cutrans.rnnt_loss(**logits_args(**over), **kw)


def call_fused(**over):
    kw = {k: over.pop(k) for k in list(over) if k not in fused_args()}
    return cutrans.transducer_loss(**fused_args(**over), **kw)


LOGITS_CASES = [
    (dict(logits=np.zeros((2, 4, 3))), ValueError, r"logits: expected 4 dimensions .*got shape \(2, 4, 3\)"),
    (dict(logits=np.zeros((3, 4, 3, 5), np.float32)), ValueError, r"logits: expected size 2 \(batch size B"),
    (dict(logits=np.zeros((2, 4, 4, 5), np.float32)), ValueError, r"logits: expected size 3 \(U\+1"),
    (dict(logits=np.zeros((2, 4, 3, 5), np.int32)), TypeError, r"logits: expected dtype float16.*got int32"),
    (dict(logits=[[1.0]]), TypeError, r"logits: expected an array, got list"),
    (dict(targets=np.array([[1, 2], [3, 0]], np.float32)), TypeError, r"targets: expected dtype int32 or int64, got float32"),
    (dict(targets=np.array([1, 2], np.int32)), ValueError, r"targets: expected 2 dimensions"),
    (dict(logit_lengths=np.array([4, 0], np.int32)), ValueError, r"logit_lengths: expected frame counts in \[1, 4\], got 0 for sample 1"),
    (dict(logit_lengths=np.array([5, 2], np.int32)), ValueError, r"logit_lengths: expected frame counts in \[1, 4\], got 5 for sample 0"),
    (dict(logit_lengths=np.array([4], np.int32)), ValueError, r"logit_lengths: expected size 2 \(batch size B\)"),
    (dict(logit_lengths=np.array([4.0, 2.0])), TypeError, r"logit_lengths: expected dtype int32 or int64, got float64"),
    (dict(target_lengths=np.array([-1, 1], np.int32)), ValueError, r"target_lengths: expected label counts in \[0, 2\], got -1 for sample 0"),
    (dict(target_lengths=np.array([2, 3], np.int32)), ValueError, r"target_lengths: expected label counts in \[0, 2\], got 3 for sample 1"),
    (dict(targets=np.array([[1, 5], [3, 0]], np.int32)), ValueError, r"targets: expected labels in \[0, 5\), got 5 at sample 0, position 1"),
    (dict(targets=np.array([[1, -2], [3, 0]], np.int32)), ValueError, r"targets: expected labels in \[0, 5\), got -2"),
    (dict(targets=np.array([[1, 2], [0, 0]], np.int32)), ValueError, r"targets: expected no blank \(0\) within target_lengths, found it at sample 1, position 0"),
    (dict(blank=5), ValueError, r"blank: expected a label id in \[-5, 5\) for V=5, got 5"),
    (dict(blank=1.0), TypeError, r"blank: expected an int, got float"),
    (dict(clamp=float("inf")), ValueError, r"clamp: expected a finite number \(<= 0 disables\), got inf"),
    (dict(clamp="x"), TypeError, r"clamp: expected a real number or None, got str"),
    (dict(fastemit_lambda=-0.1), ValueError, r"fastemit_lambda: expected a finite number >= 0.0, got -0.1"),
    (dict(fastemit_lambda=float("nan")), ValueError, r"fastemit_lambda: expected a finite number"),
    (dict(reduction="avg"), ValueError, r"reduction: expected one of 'none', 'mean', 'sum', got 'avg'"),
    (dict(layout="ragged"), ValueError, r"layout: expected one of 'padded', 'packed', got 'ragged'"),
    (dict(backend="tpu"), ValueError, r"backend: expected one of 'numpy', 'cupy', 'emulated'"),
    (dict(return_grad=1), TypeError, r"^return_grad: expected a bool, got int$"),
]


@pytest.mark.parametrize("over,exc,msg", LOGITS_CASES)
def test_logits_op_errors(over, exc, msg):
    with pytest.raises(exc, match=msg):
        call_logits(**over)


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("bad,where", [(np.nan, 2), (np.inf, 2), (-np.inf, 0)])
def test_non_finite_logits(bad, where, backend):
    logits = logits_args()["logits"].copy()
    logits[1, 0, 0, where] = bad  # label 2 is never a target of sample 1; 0 is blank
    with pytest.raises(ValueError, match=r"logits: expected finite values \(-inf only for masked "
                                         r"labels other than blank\), found NaN or \+inf"):
        call_logits(logits=logits, backend=backend, return_grad=True)


@pytest.mark.parametrize("V", [5, 40, 300])
def test_nan_logit_rejected_by_the_kernels_for_every_vocabulary(V):
    """A NaN anywhere in a valid row must reach the row's log-sum-exp (emulated kernels),
    also when a warp's other lanes hold no logit (V < 32: the NaN state is sticky)."""
    rng = np.random.default_rng(V)
    logits = rng.standard_normal((1, 2, 1, V)).astype(np.float32)
    for k in range(1, V, max(1, V // 7)):
        z = logits.copy()
        z[0, 1, 0, k] = np.nan
        with pytest.raises(ValueError, match=r"logits: expected finite values"):
            cutrans.rnnt_loss(z, np.zeros((1, 0), np.int32), np.array([2], np.int32),
                              np.array([0], np.int32), blank=0, backend="emulated")


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
def test_minus_inf_masks_a_label(backend):
    logits = logits_args()["logits"].astype(np.float64)
    masked = logits.copy()
    masked[..., 4] = -np.inf  # label 4 is no target: masking it == a logit of -1e4
    very_negative = logits.copy()
    very_negative[..., 4] = -1e4
    a, ga = call_logits(logits=masked, return_grad=True, backend=backend)
    b, gb = call_logits(logits=very_negative, return_grad=True, backend=backend)
    np.testing.assert_allclose(a, b, rtol=1e-14)
    np.testing.assert_allclose(ga, gb, atol=1e-15)
    assert np.all(ga[..., 4] == 0)


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("pad", [-100, 7, 10**6])
def test_padding_targets_are_not_read(backend, pad):
    """targets beyond target_lengths are padding: never read, whatever their value."""
    args = logits_args(targets=np.array([[1, 2], [3, 0]], np.int32),
                       target_lengths=np.array([2, 0], np.int32))
    want, want_g = call_logits(**args, return_grad=True, backend=backend)
    args["targets"] = np.array([[1, 2], [pad, pad]], np.int32)
    got, got_g = call_logits(**args, return_grad=True, backend=backend)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_g, want_g)


@pytest.mark.parametrize("bad", [1, b"numpy", object()])
def test_backend_of_a_wrong_type(bad):
    with pytest.raises(TypeError, match=r"backend: expected"):
        call_logits(backend=bad)


@pytest.mark.parametrize("flag", ["sample_wise", "compute_grad"])
def test_flags_must_be_bool(flag):
    with pytest.raises(TypeError, match=rf"{flag}: expected a bool"):
        call_fused(**{flag: "no"})


def test_masked_target_label_means_no_alignment():
    logits = logits_args()["logits"].copy()
    logits[0, :, :, 2] = -np.inf  # label 2 is the second target of sample 0
    with pytest.raises(ValueError, match=r"logits: no alignment of sample 0 has a nonzero "
                                         r"probability"):
        call_logits(logits=logits)


def test_empty_batch():
    with pytest.raises(ValueError, match=r"targets: expected at least one sample \(B >= 1\), got B=0"):
        call_logits(logits=np.zeros((0, 4, 3, 5), np.float32), targets=np.zeros((0, 2), np.int32),
                    logit_lengths=np.zeros(0, np.int32), target_lengths=np.zeros(0, np.int32))
    with pytest.raises(ValueError, match=r"enc: expected at least one sample \(B >= 1\), got B=0"):
        call_fused(enc=np.zeros((0, 4, 3)), pred=np.zeros((0, 3, 3)), targets=np.zeros((0, 2), int),
                   enc_lengths=np.zeros(0, int), target_lengths=np.zeros(0, int))


@pytest.mark.parametrize("up,msg", [(np.ones(1), r"got \(1,\)"), (np.ones(5), r"got \(5,\)"),
                                    (1.0, r"got \(\)"), (np.ones((2, 1)), r"got \(2, 1\)")])
def test_upstream_gradient_shape(up, msg):
    _, ctx = cutrans.rnnt_loss_forward(*logits_args().values())
    with pytest.raises(ValueError, match=r"grad_losses: expected shape \(2,\) \(one upstream "
                                         r"gradient per sample\), " + msg):
        cutrans.rnnt_loss_backward(ctx, up)
    _, fctx = cutrans.transducer_forward(*fused_args().values())
    with pytest.raises(ValueError, match=r"grad_losses: expected shape \(2,\)"):
        cutrans.transducer_backward(fctx, up)


def test_strided_upstream_gradient_is_honoured():
    up = np.array([1.0, 9.0, -2.0, 9.0])
    _, ctx = cutrans.rnnt_loss_forward(*logits_args().values())
    g1 = cutrans.rnnt_loss_backward(ctx, up[::2])
    g2 = cutrans.rnnt_loss_backward(ctx, np.array([1.0, -2.0]))
    np.testing.assert_array_equal(g1, g2)


def test_arrays_must_be_one_kind():
    class Fake:  # a DLPack array of another library, on the CPU
        __module__ = "otherlib.arrays"
        shape, dtype, ndim = (5,), np.dtype(np.float64), 1

        def __dlpack__(self, stream=None):
            raise AssertionError("not to be converted")

        def __dlpack_device__(self):
            return (1, 0)
    with pytest.raises(TypeError, match=r"bias: expected a numpy array on the CPU like enc, "
                                        r"got a otherlib array on the CPU"):
        call_fused(bias=Fake())

    class NotDLPack:
        __module__ = "otherlib.arrays"
        shape, dtype, ndim = (5,), np.dtype(np.float64), 1
    with pytest.raises(TypeError, match=r"bias: expected an array supporting DLPack"):
        call_fused(bias=NotDLPack())


def test_arrays_must_match_an_explicit_backend():
    pytest.importorskip("cupy")  # importable without a GPU; nothing touches a device here
    with pytest.raises(TypeError, match=r"enc: expected a cupy array for the cupy backend, "
                                        r"got numpy.ndarray"):
        call_fused(backend="cupy")


def test_packed_row_count_checked():
    with pytest.raises(ValueError, match=r"logits: expected 16 rows \(sum of T_b \* \(U_b \+ 1\)\)"):
        call_logits(logits=np.zeros((17, 5), np.float32), layout="packed")


def test_negative_blank_counts_from_the_end():
    a = call_logits(blank=-1, targets=np.array([[1, 2], [3, 0]], np.int32))
    b = call_logits(blank=4, targets=np.array([[1, 2], [3, 0]], np.int32))
    np.testing.assert_allclose(a, b)


FUSED_CASES = [
    (dict(enc=np.zeros((2, 4))), ValueError, r"enc: expected 3 dimensions \(B, T, H\)"),
    (dict(pred=np.zeros((2, 3, 4))), ValueError, r"pred: expected size 3 \(hidden size H of enc\)"),
    (dict(pred=np.zeros((2, 4, 3))), ValueError, r"pred: expected size 3 \(U\+1, from targets' width U\)"),
    (dict(pred=np.zeros((2, 3, 3), np.float32)), TypeError, r"pred: expected the dtype of enc \(float64\), got float32"),
    (dict(weight=np.zeros((5, 4))), ValueError, r"weight: expected size 3 \(hidden size H of enc\)"),
    (dict(bias=np.zeros(4)), ValueError, r"bias: expected size 5 \(vocabulary size V of weight\)"),
    (dict(enc_lengths=np.array([0, 2])), ValueError, r"enc_lengths: expected frame counts in \[1, 4\], got 0"),
    (dict(target_lengths=np.array([3, 1])), ValueError, r"target_lengths: expected label counts in \[0, 2\], got 3"),
    (dict(targets=np.array([[1, 2], [3, 0]])[:1]), ValueError, r"targets: expected size 2 \(batch size B of enc\)"),
    (dict(activation="gelu"), ValueError, r"activation: expected one of 'tanh', 'relu', 'identity', got 'gelu'"),
    (dict(max_workspace_bytes=100), ValueError, r"max_workspace_bytes=100 is too small: one row of the lattice needs \d+ bytes of workspace \(\d+ per row \+ \d+ fixed\)"),
    (dict(max_workspace_bytes=1.5e9), TypeError, r"max_workspace_bytes: expected an int, got float"),
    (dict(targets=np.array([[1, 7], [3, 0]])), ValueError, r"targets: expected labels in \[0, 5\), got 7"),
    (dict(enc=np.zeros((2, 4, 0)), pred=np.zeros((2, 3, 0)), weight=np.zeros((5, 0))),
     ValueError, r"enc: expected a hidden size H >= 1"),
]


@pytest.mark.parametrize("over,exc,msg", FUSED_CASES)
def test_fused_op_errors(over, exc, msg):
    with pytest.raises(exc, match=msg):
        call_fused(**over)


@pytest.mark.parametrize("name", ["enc", "pred", "weight", "bias"])
def test_fused_non_finite(name):
    x = fused_args()[name].copy()
    x.flat[1] = np.nan
    with pytest.raises(ValueError, match=rf"{name}: expected finite values"):
        call_fused(**{name: x})


@pytest.mark.parametrize("op", ["rnnt_loss", "transducer"])
def test_backward_without_a_context(op):
    """need_grad=False returns no context: passing it on names ``ctx``."""
    if op == "rnnt_loss":
        _, ctx = cutrans.rnnt_loss_forward(**logits_args(), need_grad=False)
        call = lambda: cutrans.rnnt_loss_backward(ctx, np.ones(2))  # noqa: E731
    else:
        _, ctx = cutrans.transducer_forward(**fused_args(), need_grad=False)
        call = lambda: cutrans.transducer_backward(ctx, np.ones(2))  # noqa: E731
    assert ctx is None
    with pytest.raises(TypeError, match=r"^ctx: expected the context that \w+_forward\(\.\.\., "
                                        r"need_grad=True\) returns, got NoneType$"):
        call()
