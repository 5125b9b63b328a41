"""The public API with backend="emulated" (the .cu kernels on the CPU) vs backend="numpy"."""
import numpy as np
import pytest

import cutrans
from cutrans.backends.kernel_backend import emulated_backend
from kcases import STORAGE
from kpipeline import bits, check_rnnt_loss, check_transducer_loss, logits_inputs


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dtype", STORAGE)
def test_rnnt_loss(err_stats, dtype, layout):
    check_rnnt_loss("emulated", np, 0, dtype, layout, stats=err_stats)


@pytest.mark.parametrize("fastemit,clamp,reduction", [(0.5, None, "sum"), (0.0, 0.02, "none"),
                                                      (0.1, 0.05, "mean")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rnnt_loss_fastemit_clamp(err_stats, dtype, fastemit, clamp, reduction):
    check_rnnt_loss("emulated", np, 1, dtype, "padded", fastemit=fastemit, clamp=clamp,
                    reduction=reduction, stats=err_stats)


def test_rnnt_grad_rows_sum_to_zero():
    case, g = check_rnnt_loss("emulated", np, 2, "float64", "packed")
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transducer_loss(err_stats, dtype, activation):
    # 4096 bytes: a few rows per chunk -> chunks split samples and span several
    check_transducer_loss("emulated", np, 3, dtype, activation=activation, stats=err_stats)


@pytest.mark.parametrize("opts", [dict(fastemit=0.3), dict(clamp=0.01), dict(sample_wise=True),
                                  dict(workspace=1 << 20), dict(fastemit=0.1, clamp=0.05,
                                                                sample_wise=True)])
def test_transducer_loss_options(err_stats, opts):
    check_transducer_loss("emulated", np, 4, "float64", stats=err_stats, **opts)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_transducer_loss_low_precision(err_stats, dtype):
    check_transducer_loss("emulated", np, 5, dtype, stats=err_stats)


def test_thread_order_does_not_matter():
    """Reverse and shuffled thread orders give bit-identical results (no order dependence)."""
    case, args = logits_inputs(6, "float32", "padded")
    outs = []
    for order in ("forward", "reverse", "shuffle"):
        be = emulated_backend(order=order)
        loss, grad = cutrans.rnnt_loss(*args, blank=case.blank, return_grad=True,
                                       fastemit_lambda=0.1, backend=be)
        t = cutrans.transducer_loss(*check_inputs(), backend=be, max_workspace_bytes=2048)
        outs.append([bits(loss), bits(grad), bits(t.loss)] + [bits(g) for g in t.grads])
    assert outs[0] == outs[1] == outs[2]


def check_inputs():
    from kpipeline import fused_inputs
    return fused_inputs(7, "float32")[1]


def test_deterministic():
    """Two emulated runs are bit-identical (no atomics, fixed reduction order)."""
    args = check_inputs()
    a = cutrans.transducer_loss(*args, backend="emulated", max_workspace_bytes=3000)
    b = cutrans.transducer_loss(*args, backend="emulated", max_workspace_bytes=3000)
    assert [bits(x) for x in a.grads] == [bits(x) for x in b.grads]
    assert bits(a.loss) == bits(b.loss)
