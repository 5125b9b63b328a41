"""The public API with backend="emulated" (the .cu kernels on the CPU) vs backend="numpy"."""
import numpy as np
import pytest

import cutrans
from cutrans._fused import workspace_bytes
from cutrans.backends.kernel_backend import emulated_backend
from kcases import LOW, STORAGE
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
    # the default workspace: a few rows per chunk -> chunks split samples and span several
    check_transducer_loss("emulated", np, 3, dtype, activation=activation, stats=err_stats)


@pytest.mark.parametrize("opts", [dict(fastemit=0.3), dict(clamp=0.01), dict(sample_wise=True),
                                  dict(workspace=1 << 20), dict(fastemit=0.1, clamp=0.05,
                                                                sample_wise=True)])
def test_transducer_loss_options(err_stats, opts):
    check_transducer_loss("emulated", np, 4, "float64", stats=err_stats, **opts)


@pytest.mark.parametrize("dtype", LOW)
def test_transducer_loss_low_precision(err_stats, dtype):
    check_transducer_loss("emulated", np, 5, dtype, stats=err_stats)


@pytest.mark.parametrize("dtype", STORAGE)
def test_thread_order_does_not_matter(dtype):
    """Forward, reverse and shuffled CUDA-thread orders give bit-identical results for every
    kernel: the logits op (padded and packed, FastEmit + clamp, 32- and 128-thread rows) and
    the fused op (many chunks, one resident chunk, sample-wise; reduction none)."""
    from kpipeline import fused_inputs
    case, args = logits_inputs(6, dtype, "padded")
    wcase, wargs = logits_inputs(8, dtype, "packed", B=3, T=4, U=3, V=150)
    fcase, fargs = fused_inputs(7, dtype, H=40)

    def rows(n):  # a budget of n rows per chunk
        return workspace_bytes(*fargs[:3], n)
    outs = []
    for order in ("forward", "reverse", "shuffle"):
        be = emulated_backend(order=order)
        out = []
        for a, c, kw in ((args, case, dict(fastemit_lambda=0.1, clamp=0.3)),
                         (wargs, wcase, dict(layout="packed", reduction="sum"))):
            loss, grad = cutrans.rnnt_loss(*a, blank=c.blank, return_grad=True, backend=be,
                                           **kw)
            out += [bits(loss), bits(grad)]
        for kw in (dict(max_workspace_bytes=rows(3)), dict(),
                   dict(max_workspace_bytes=rows(7), sample_wise=True, reduction="none",
                        fastemit_lambda=0.2, clamp=0.05)):
            t = cutrans.transducer_loss(*fargs, blank=fcase.blank, backend=be, **kw)
            out += [bits(t.loss)] + [bits(g) for g in t.grads]
        outs.append(out)
    assert len(outs[0]) == 2 * 2 + 3 * 5
    for i, (a, b, c) in enumerate(zip(*outs)):
        assert a == b == c, f"output {i} depends on the thread order"


def check_inputs():
    from kpipeline import fused_inputs
    return fused_inputs(7, "float32")[1]


def test_deterministic():
    """Two emulated runs are bit-identical (no atomics, fixed reduction order)."""
    args = check_inputs()
    budget = workspace_bytes(*args[:3], rows_per_chunk=12)  # several chunks
    a = cutrans.transducer_loss(*args, backend="emulated", max_workspace_bytes=budget)
    b = cutrans.transducer_loss(*args, backend="emulated", max_workspace_bytes=budget)
    assert [bits(x) for x in a.grads] == [bits(x) for x in b.grads]
    assert bits(a.loss) == bits(b.loss)
