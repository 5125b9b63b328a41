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


CUSTOM_OPS = ("rnnt_loss_fwd", "rnnt_loss_bwd", "transducer_fwd", "transducer_bwd",
              "transducer_reduced", "rnnt_lattice")


@pytest.fixture(scope="module")
def custom_op_calls():
    """Every cutrans:: custom-op call the public torch API makes, with its arguments:
    forward and backward of rnnt_loss (fused log-softmax and on log-probs), of
    transducer_loss (all and some gradients), and the no-grad forwards."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.namespace == "cutrans":
                self.calls.setdefault(func._opname, []).append((func, args, kwargs))
            return func(*args, **kwargs)

    logits, targets, t_len, u_len = logits_case(0, B=3, T=3, U=2, V=4)
    y, tl, ul = map(torch.tensor, (targets, t_len, u_len))
    case = [torch.tensor(a) for a in fused_case(0, B=3, T=3, U=2)]
    with Recorder() as rec:
        for fused in (True, False):
            x = torch.tensor(logits, requires_grad=True)
            rnnt_loss(x if fused else x.log_softmax(-1), y, tl, ul, blank=0, clamp=0.5,
                      fused_log_softmax=fused, fastemit_lambda=0.1).backward()
        with torch.no_grad():
            rnnt_loss(torch.tensor(logits), y, tl, ul, blank=0)
            transducer_loss(*case)
        for which in ((0, 1, 2, 3), (2,)):
            fl = [a.clone().requires_grad_(i in which) for i, a in enumerate(case[:4])]
            transducer_loss(*fl, *case[4:], max_workspace_bytes=2000,
                            reduction="none").sum().backward()
            for reduction in ("mean", "sum"):  # one pass
                transducer_loss(*fl, *case[4:], reduction=reduction).backward()
            status = torch.zeros((), dtype=torch.int32)
            transducer_loss(*fl, *case[4:], checks="device", status=status).backward()
        # a variant: TDT with omega (3 duration logits after the tokens; coefficients
        # (B, T, U+1, 6))
        tdt = dict(variant="tdt", durations=[0, 1, 2], sigma=0.05, omega=0.25)
        x = torch.randn(3, 3, 3, 7, dtype=torch.float64, requires_grad=True)
        rnnt_loss(x, y, tl, ul, blank=0, **tdt).backward()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(10, case[0].shape[-1], dtype=torch.float64, generator=g,
                        requires_grad=True)
        bias = torch.zeros(10, dtype=torch.float64, requires_grad=True)
        enc, pred = (a.clone().requires_grad_() for a in case[:2])
        for reduction in ("none", "mean"):
            transducer_loss(enc, pred, w, bias, *case[4:], reduction=reduction,
                            **tdt).sum().backward()
    return rec.calls


def _fresh(a, keep_grad):
    if isinstance(a, torch.Tensor):
        return a.detach().clone().requires_grad_(keep_grad and a.requires_grad)
    return list(a) if isinstance(a, (list, tuple)) else a


@pytest.mark.parametrize("name", CUSTOM_OPS)
def test_custom_op_passes_opcheck(name, custom_op_calls):
    """torch.library.opcheck (schema, autograd registration, fake tensors, AOT dispatch) on
    every distinct call of each of the custom ops."""
    calls = custom_op_calls.get(name, [])
    assert calls, f"cutrans::{name} is never called by the public API (removed? renamed?)"
    seen = set()
    for op, args, kwargs in calls:
        sig = tuple((tuple(a.shape), a.requires_grad) if isinstance(a, torch.Tensor) else
                    repr(a) for a in args)
        if sig in seen:
            continue
        seen.add(sig)
        backward_op = name.endswith("_bwd")  # runs inside backward: no autograd of its own
        torch.library.opcheck(op, tuple(_fresh(a, not backward_op) for a in args), kwargs)
    print(f"cutrans::{name}: opcheck on {len(seen)} distinct call(s)")


def test_every_custom_op_is_opchecked(custom_op_calls):
    """A new cutrans:: op must join CUSTOM_OPS (and so the opcheck above)."""
    assert set(custom_op_calls) <= set(CUSTOM_OPS), sorted(custom_op_calls)


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


def test_compiled_logprob_path_checks_nan():
    """fused_log_softmax=False checks its log-probabilities inside its op, so a NaN at a
    lattice point raises under torch.compile as in eager mode."""
    logits, targets, t_len, u_len = logits_case(4, V=5)
    lp = torch.tensor(logits, dtype=torch.float32).log_softmax(-1)
    lp[0, 0, 0, 3] = float("nan")  # a point of sample 0's lattice (a label it never emits)
    y, tl, ul = map(torch.tensor, (targets, t_len, u_len))
    f = torch.compile(lambda x: rnnt_loss(x, y, tl, ul, blank=0, fused_log_softmax=False),
                      fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"logits: expected log-probabilities without NaN"):
        f(lp)
