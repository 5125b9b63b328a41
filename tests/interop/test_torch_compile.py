"""torch.compile(fullgraph=True) through the cutrans:: custom ops (fake + autograd)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cutrans.interop.torch import rnnt_loss, transducer_loss  # noqa: E402
from interop_cases import fused_case, logits_case  # noqa: E402


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(fn, xs):
    for x in xs:
        x.grad = None
    loss = fn(*xs)
    loss.backward()
    return loss.detach(), [x.grad.clone() for x in xs]


def test_custom_ops_pass_opcheck():
    logits, targets, t_len, u_len = logits_case(0, B=2, T=3, U=2, V=4)
    x = torch.tensor(logits, requires_grad=True)
    y, tl, ul = map(torch.tensor, (targets, t_len, u_len))
    torch.library.opcheck(torch.ops.cutrans.rnnt_loss_fwd.default,
                          (x, y, tl, ul, 0, 0.0, 0.0, True))
    enc, pred, w, b, y2, tl2, ul2 = map(torch.tensor, fused_case(0, B=2, T=3, U=2))
    enc.requires_grad_()
    status = torch.zeros((), dtype=torch.int32)
    torch.library.opcheck(torch.ops.cutrans.transducer_fwd.default,
                          (enc, pred, w, b, y2, tl2, ul2, "tanh", 0, 0.0, 0.0, 1 << 20, False,
                           False, "host", status, True))
    for checks in ("host", "device"):
        torch.library.opcheck(torch.ops.cutrans.transducer_reduced.default,
                              (enc, pred, w, b, y2, tl2, ul2, "tanh", 0, 0.0, 0.0, 1 << 20,
                               False, False, checks, status, "mean", [True, False, False, True]))


@pytest.mark.parametrize("fused_log_softmax", [True, False])
def test_rnnt_loss_compiles_fullgraph(fused_log_softmax):
    logits, targets, t_len, u_len = logits_case(1, V=5)
    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    y, tl, ul = map(torch.tensor, (targets, t_len, u_len))

    def f(x):
        inp = x if fused_log_softmax else x.log_softmax(-1)
        return rnnt_loss(2.0 * inp, y, tl, ul, blank=0, fused_log_softmax=fused_log_softmax)

    want, want_g = _grads(f, [x])
    got, got_g = _grads(torch.compile(f, fullgraph=True, backend="aot_eager"), [x])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_g[0], want_g[0])


def test_transducer_loss_compiles_fullgraph_inductor():
    enc, pred, w, b, y, tl, ul = fused_case(2)
    xs = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (enc, pred)]
    lin = torch.nn.Linear(5, 7)
    y, tl, ul = map(torch.tensor, (y, tl, ul))

    def f(e, p):
        return transducer_loss(torch.relu(e) * 1.5, p, lin.weight, lin.bias, y, tl, ul,
                               reduction="sum")

    want, want_g = _grads(f, xs)
    wg = lin.weight.grad.clone()
    lin.weight.grad = None
    got, got_g = _grads(torch.compile(f, fullgraph=True), xs)  # default backend: inductor
    torch.testing.assert_close(got, want)
    for a, b_ in zip(got_g, want_g):
        torch.testing.assert_close(a, b_)
    torch.testing.assert_close(lin.weight.grad, wg)


def test_compiled_error_still_raises():
    logits, targets, t_len, u_len = logits_case(3, V=5)
    x = torch.tensor(logits, dtype=torch.float32)
    y, ul = torch.tensor(targets), torch.tensor(u_len)
    f = torch.compile(lambda x, tl: rnnt_loss(x, y, tl, ul, blank=0), fullgraph=True,
                      backend="aot_eager")
    with pytest.raises(Exception, match=r"logit_lengths: expected frame counts in \[1, 5\]"):
        f(x, torch.tensor(np.array([9, 1, 1], np.int32)))
