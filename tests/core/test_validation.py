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
    (dict(clamp=-1.0), ValueError, r"clamp: expected a finite number >= 0.0, got -1.0"),
    (dict(clamp="x"), TypeError, r"clamp: expected a real number, got str"),
    (dict(fastemit_lambda=-0.1), ValueError, r"fastemit_lambda: expected a finite number >= 0.0, got -0.1"),
    (dict(fastemit_lambda=float("nan")), ValueError, r"fastemit_lambda: expected a finite number"),
    (dict(reduction="avg"), ValueError, r"reduction: expected one of 'none', 'mean', 'sum', got 'avg'"),
    (dict(layout="ragged"), ValueError, r"layout: expected one of 'padded', 'packed', got 'ragged'"),
    (dict(backend="tpu"), ValueError, r"backend: expected one of 'numpy', 'cupy', 'emulated'"),
]


@pytest.mark.parametrize("over,exc,msg", LOGITS_CASES)
def test_logits_op_errors(over, exc, msg):
    with pytest.raises(exc, match=msg):
        call_logits(**over)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits(bad):
    logits = logits_args()["logits"].copy()
    logits[1, 0, 0, 2] = bad
    with pytest.raises(ValueError, match=r"logits: expected finite values, found NaN or infinity"):
        call_logits(logits=logits)


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
    (dict(max_workspace_bytes=100), ValueError, r"max_workspace_bytes=100 is too small: one row of the lattice needs 208 bytes of workspace \(88 per row \+ 120 fixed\)"),
    (dict(max_workspace_bytes=1.5e9), TypeError, r"max_workspace_bytes: expected an int, got float"),
    (dict(targets=np.array([[1, 7], [3, 0]])), ValueError, r"targets: expected labels in \[0, 5\), got 7"),
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
