"""The precision policy, measured against float64 runs on the same (rounded) inputs.

* float16/bfloat16: joint activations and logits stored in the input dtype, float32 math
  and accumulation. Every gradient's error must stay within the error of the batched
  computation done in that dtype (what ``torch.autocast`` runs: joint and output layer in
  16 bits, log_softmax and loss in float32), measured on the same inputs.
* float32: exact float32 by default; ``allow_tf32=True`` lets the GEMMs round their inputs
  to TF32 (10-bit mantissa), which the NumPy backend emulates -- the error grows to the TF32
  scale but no further.
"""
import numpy as np
import pytest

import cutrans
from oracles import torch_fused_losses, torch_rnnt_losses

NAMES = ("enc", "pred", "weight", "bias")


def case(seed, B=3, T=7, U=4, V=11, H=16):
    rng = np.random.default_rng(seed)
    t_len = rng.integers(1, T + 1, B)
    u_len = rng.integers(0, U + 1, B)
    t_len[0], u_len[0] = T, U
    return ([rng.standard_normal((B, T, H)), rng.standard_normal((B, U + 1, H)),
             rng.standard_normal((V, H)) / np.sqrt(H), rng.standard_normal(V) * 0.1],
            rng.integers(1, V, (B, U)), t_len, u_len)


def float64_reference(floats, targets, t_len, u_len, activation):
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in floats]
    torch_fused_losses(*ts, targets, t_len, u_len, activation, 0).sum().backward()
    return [t.grad.numpy() for t in ts]


def batched_low_precision(floats, targets, t_len, u_len, activation, tdt):
    """The batched computation in ``tdt`` (joint, output layer), loss in float32."""
    import torch
    ts = [torch.tensor(np.asarray(x, np.float32)).to(tdt).requires_grad_() for x in floats]
    act = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda x: x}[activation]
    z = torch.nn.functional.linear(act(ts[0][:, :, None] + ts[1][:, None]), ts[2], ts[3])
    torch_rnnt_losses(torch.log_softmax(z.float(), -1), targets, t_len, u_len, 0).sum().backward()
    return [t.grad.double().numpy() for t in ts]


def rel_err(g, ref):
    return float(np.abs(np.asarray(g, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("seed", range(3))
def test_half_precision_within_the_batched_baseline(dtype, seed, activation):
    torch = pytest.importorskip("torch")
    npdt = pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.float16
    floats, targets, t_len, u_len = case(seed)
    low = [x.astype(npdt) for x in floats]
    ref = float64_reference(low, targets, t_len, u_len, activation)
    base = batched_low_precision(low, targets, t_len, u_len, activation, getattr(torch, dtype))
    out = cutrans.transducer_loss(*low, targets, t_len, u_len, reduction="sum",
                                  activation=activation, max_workspace_bytes=1 << 14)
    for name, g, r, b in zip(NAMES, out.grads, ref, base):
        assert g.dtype == npdt, name
        ours, theirs = rel_err(g, r), rel_err(b, r)
        # measured (3 seeds, tanh): ours 0.4-0.6x the baseline's error on enc/pred, equal on
        # W/b (both rounded once to 16 bits); the bound leaves room for ties
        assert ours <= 1.25 * theirs + 1e-4, f"{name}: {ours:.2e} vs baseline {theirs:.2e}"
        assert ours < 0.1, name  # and a real gradient, not zeros


@pytest.mark.parametrize("seed", range(2))
def test_float32_exact_by_default_and_tf32_on_request(seed):
    floats, targets, t_len, u_len = case(seed, V=40, H=64)
    f32 = [x.astype(np.float32) for x in floats]
    ref = float64_reference(f32, targets, t_len, u_len, "tanh")
    exact = cutrans.transducer_loss(*f32, targets, t_len, u_len, reduction="sum")
    tf32 = cutrans.transducer_loss(*f32, targets, t_len, u_len, reduction="sum",
                                   allow_tf32=True)
    for name, g, t, r in zip(NAMES, exact.grads, tf32.grads, ref):
        e_exact, e_tf32 = rel_err(g, r), rel_err(t, r)
        assert e_exact < 2e-6, (name, e_exact)  # float32 round-off (measured ~1e-7)
        assert e_tf32 < 2e-2, (name, e_tf32)  # TF32's 2^-11 unit round-off, accumulated
    # TF32 changes the bits of every GEMM-produced gradient (the flag is honoured)
    assert all(not np.array_equal(g, t) for g, t in zip(exact.grads, tf32.grads))


def test_tf32_is_a_float32_only_option():
    floats, targets, t_len, u_len = case(0)
    for dt in (np.float64, np.float16):
        xs = [x.astype(dt) for x in floats]
        a = cutrans.transducer_loss(*xs, targets, t_len, u_len)
        b = cutrans.transducer_loss(*xs, targets, t_len, u_len, allow_tf32=True)
        for g, h in zip(a.grads, b.grads):
            np.testing.assert_array_equal(g, h)
    with pytest.raises(TypeError, match="allow_tf32: expected a bool, got int"):
        cutrans.transducer_loss(*floats, targets, t_len, u_len, allow_tf32=1)
