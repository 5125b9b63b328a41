"""The fused loss inside DistributedDataParallel (gloo, 2 CPU processes) gives the
gradients of a single-process run on the full batch."""
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from interop_cases import fused_case  # noqa: E402

B, T, U, F, H, V = 4, 5, 3, 6, 8, 7


class TinyTransducer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from cutrans.interop.torch import TransducerLoss
        self.enc = torch.nn.Linear(F, H, dtype=torch.float64)
        self.pred = torch.nn.Embedding(V, H, dtype=torch.float64)
        self.loss = TransducerLoss(in_features=H, vocab_size=V, dtype=torch.float64)

    def forward(self, feats, targets, t_len, u_len):
        sos = torch.cat([targets.new_zeros(targets.shape[0], 1), targets], 1).long()
        return self.loss(self.enc(feats), self.pred(sos), targets, t_len, u_len)


def _data():
    rng = np.random.default_rng(0)
    _, _, _, _, y, tl, ul = fused_case(0, B=B, T=T, U=U, V=V)
    feats = torch.tensor(rng.standard_normal((B, T, F)))
    return feats, torch.tensor(y), torch.tensor(tl), torch.tensor(ul)


def _model():
    torch.manual_seed(0)
    return TinyTransducer()


def _worker(rank, world, port, out_path):
    """One DDP rank. It ends with ``os._exit(0)``: torch 2.13's gloo backend aborts now and
    then at interpreter exit ("terminate called without an active exception", SIGABRT after
    ``destroy_process_group``; seen in about 1 of 8 runs with a bare ``nn.Linear`` and no
    cutrans), so a rank that finished its work skips the interpreter's teardown."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        feats, y, tl, ul = _data()
        sl = slice(rank * B // world, (rank + 1) * B // world)
        loss = model(feats[sl], y[sl], tl[sl], ul[sl])
        loss.backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out_path)
    finally:
        dist.destroy_process_group()
    os._exit(0)  # results are written (torch.save closed the file): skip the teardown


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path / "grads.pt"
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    model = _model()
    model(*_data()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and got[name] is not None, name
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)
