"""The PyTorch batched baseline (and its own alpha recursion) against cutrans."""
import numpy as np
import pytest

import cutrans

torch = pytest.importorskip("torch")
from cutrans.bench.baseline import alpha_loss, batched_loss  # noqa: E402
from cutrans.bench.workloads import custom_workload, make_inputs  # noqa: E402


@pytest.mark.parametrize("seed", range(3))
def test_batched_baseline_matches_fused_loss_and_grads(seed):
    x = make_inputs(custom_workload(4, 9, 4, 7, 5), seed)
    params = [torch.tensor(a, dtype=torch.float64, requires_grad=True)
              for a in (x.enc, x.pred, x.weight, x.bias)]
    ints = [torch.tensor(a) for a in (x.targets, x.enc_lengths, x.target_lengths)]
    loss = batched_loss(*params, *ints, use_torchaudio=False)
    loss.backward()
    f64 = [a.astype(np.float64) for a in (x.enc, x.pred, x.weight, x.bias)]
    out = cutrans.transducer_loss(*f64, x.targets, x.enc_lengths, x.target_lengths)
    np.testing.assert_allclose(loss.item(), out.loss, rtol=1e-12)
    for p, g in zip(params, out.grads):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-9, atol=1e-12)


def test_alpha_loss_on_edge_lengths():
    rng = np.random.default_rng(0)
    B, T, U, V = 3, 5, 3, 6
    logits = rng.standard_normal((B, T, U + 1, V))
    targets = rng.integers(1, V, (B, U)).astype(np.int32)
    t_len, u_len = np.array([1, 5, 3], np.int32), np.array([0, 3, 3], np.int32)
    want = cutrans.rnnt_loss(logits, targets, t_len, u_len, reduction="none")
    lp = torch.log_softmax(torch.tensor(logits), -1)
    emit = lp[:, :, :-1].gather(3, torch.tensor(targets).long()[:, None, :, None]
                                .expand(-1, T, -1, 1))[..., 0]
    got = alpha_loss(lp[..., 0], emit, torch.tensor(t_len), torch.tensor(u_len))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
