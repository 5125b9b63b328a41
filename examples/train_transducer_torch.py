"""Train a small RNN-T model on synthetic spoken digits with cutrans (PyTorch).

    python examples/train_transducer_torch.py                   # ~1 min on 2 CPU cores
    python examples/train_transducer_torch.py --plot curve.png  # + loss / error-rate plot
    python examples/train_transducer_torch.py --baseline        # batched joint + rnnt_loss
    python examples/train_transducer_torch.py --quick           # 150 steps, ~15 s (CI)

The model: a convolutional encoder over 20-dim feature frames, an embedding + LSTM
prediction network, and ``cutrans.interop.torch.TransducerLoss``, which owns the output
layer and computes joint network, output layer, log-softmax and RNN-T loss fused, in row
chunks of at most ``--workspace-mb`` -- no ``(B, T, U+1, V)`` tensor is ever built.
``--baseline`` trains the same model (same seed: same initial weights and batches) with
the textbook batched joint ``(B, T, U+1, H) -> (B, T, U+1, V)`` and
``cutrans.interop.torch.rnnt_loss`` on those logits: the same curve up to floating-point
noise, more memory. Decoding is greedy; the token error rate is measured on a fixed
held-out set. The task is described in ``digits.py``.
"""
from __future__ import annotations

import argparse
import os

# On the CPU the loss runs NumPy between torch ops: OpenBLAS threads competing with torch's
# make its small GEMMs 3-4x slower on 2 cores. Must be set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import digits  # noqa: E402
from cutrans.interop.torch import TransducerLoss, rnnt_loss  # noqa: E402


class Transducer(nn.Module):
    def __init__(self, hidden: int = 128, joint: int = 96, embed: int = 32,
                 workspace_mb: float = 1.0):
        super().__init__()
        F, V = digits.FEAT_DIM, digits.VOCAB
        self.encoder = nn.Sequential(                     # (B, F, T) -> (B, joint, T)
            nn.Conv1d(F, hidden, 5, padding=2), nn.ReLU(),
            nn.Conv1d(hidden, hidden, 5, padding=2), nn.ReLU(),
            nn.Conv1d(hidden, joint, 1))
        self.embed = nn.Embedding(V, embed)               # blank (0) is the start symbol
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.pred_proj = nn.Linear(hidden, joint)
        self.loss_fn = TransducerLoss(nn.Linear(joint, V), blank=digits.BLANK,
                                      max_workspace_bytes=int(workspace_mb * 2**20))

    def encode(self, feats):                              # (B, T, F) -> (B, T, joint)
        # contiguous: the loss would copy a transposed view itself (with a CopyWarning)
        return self.encoder(feats.transpose(1, 2)).transpose(1, 2).contiguous()

    def predict(self, tokens, state=None):                # (B, U) -> (B, U, joint), state
        out, state = self.lstm(self.embed(tokens), state)
        return self.pred_proj(out), state

    def joint(self, enc, pred):                           # the output layer of loss_fn
        return self.loss_fn.output_layer(torch.tanh(enc + pred))

    def forward(self, feats, feat_lens, targets, target_lens, baseline: bool = False):
        enc = self.encode(feats)                                         # (B, T, J)
        pred, _ = self.predict(nn.functional.pad(targets, (1, 0)).long())  # (B, U+1, J)
        if not baseline:                                  # fused, memory-bounded
            return self.loss_fn(enc, pred, targets, feat_lens, target_lens)
        logits = self.joint(enc[:, :, None], pred[:, None])              # (B, T, U+1, V)
        return rnnt_loss(logits, targets, feat_lens, target_lens, blank=digits.BLANK)

    @torch.no_grad()
    def greedy_decode(self, feats, feat_lens, max_symbols: int = 3):
        """Batched greedy search: at each frame emit argmax tokens until blank (at most
        ``max_symbols``); the prediction network advances only for emitting utterances."""
        enc = self.encode(feats)
        B = enc.shape[0]
        pred, state = self.predict(torch.zeros(B, 1, dtype=torch.long))
        pred = pred[:, 0]
        hyps = [[] for _ in range(B)]
        for t in range(enc.shape[1]):
            active = t < feat_lens
            for _ in range(max_symbols):
                k = self.joint(enc[:, t], pred).argmax(-1)
                active = active & (k != digits.BLANK)
                if not active.any():
                    break
                for b in active.nonzero()[:, 0].tolist():
                    hyps[b].append(int(k[b]))
                new_pred, new_state = self.predict(k[:, None], state)
                keep = active[:, None]
                pred = torch.where(keep, new_pred[:, 0], pred)
                state = tuple(torch.where(keep[None], n, s) for n, s in zip(new_state, state))
        return hyps


def tensors(batch):
    feats, feat_lens, targets, target_lens = batch
    return (torch.from_numpy(feats), torch.from_numpy(feat_lens), torch.from_numpy(targets),
            torch.from_numpy(target_lens))


def evaluate(model, test) -> float:
    model.eval()
    hyps = model.greedy_decode(test[0], test[1])
    model.train()
    return digits.token_error_rate(hyps, test[2], test[3])


def memory_report(model, batch):
    """Peak memory of one loss + backward on ``batch``: fused vs batched joint, for the whole
    model and for the joint + loss alone (on fixed encoder / predictor outputs)."""
    feats, feat_lens, targets, target_lens = batch
    with torch.no_grad():
        enc = model.encode(feats)
        pred, _ = model.predict(nn.functional.pad(targets, (1, 0)).long())
    enc.requires_grad_(), pred.requires_grad_()

    def whole(baseline):
        model(*batch, baseline=baseline).backward()

    def joint_and_loss(baseline):
        if baseline:
            loss = rnnt_loss(model.joint(enc[:, :, None], pred[:, None]), targets, feat_lens,
                             target_lens, blank=digits.BLANK)
        else:
            loss = model.loss_fn(enc, pred, targets, feat_lens, target_lens)
        loss.backward()

    B, T, U1, J = *enc.shape[:2], pred.shape[1], enc.shape[2]
    print(f"peak memory of one loss + backward (B={B}, T={T}, U+1={U1}, joint {J}, V="
          f"{digits.VOCAB}; the batched joint builds (B,T,U+1,{J}) tensors of "
          f"{B * T * U1 * J * 4 / 2**20:.1f} MiB and (B,T,U+1,V) of "
          f"{B * T * U1 * digits.VOCAB * 4 / 2**20:.1f} MiB):")

    def peak(fn, baseline):
        """The least of 3 steps after a warm-up (the first ones also fill allocator caches)."""
        results = []
        for _ in range(4):
            model.zero_grad(set_to_none=True)
            enc.grad = pred.grad = None
            results.append(digits.peak_memory(lambda: fn(baseline)))
        return None if None in results else min(results[1:])

    for name, baseline in (("cutrans TransducerLoss", False), ("batched joint + rnnt_loss", True)):
        peaks = [peak(whole, baseline), peak(joint_and_loss, baseline)]
        print(f"  {name:26s}: " + ("n/a (needs Linux /proc)" if None in peaks else
                                   f"whole step {peaks[0] / 2**20:6.1f} MiB, joint + loss "
                                   f"alone {peaks[1] / 2**20:6.1f} MiB"))
    model.zero_grad(set_to_none=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (the model is tiny: 1 is as fast, and "
                         "robust on a busy machine)")
    args = digits.parse_training_args(ap, argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Transducer(workspace_mb=args.workspace_mb)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    # constant learning rate, then a linear decay to 0 over the second half
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, 2 * (1 - s / max(1, args.steps))))
    test = tensors(digits.held_out_set())
    if not args.no_memory:
        memory_report(model, tensors(digits.make_batch(np.random.default_rng(99),
                                                       args.batch_size)))
    if args.steps == 0:
        return None

    mode = "batched joint + rnnt_loss" if args.baseline else "cutrans TransducerLoss"
    print(f"training ({mode}): {args.steps} steps of {args.batch_size} utterances")
    hist = digits.History(evaluate(model, test))
    bar = digits.Progress(args.steps)
    for step in range(1, args.steps + 1):
        loss = model(*tensors(digits.make_batch(rng, args.batch_size)), baseline=args.baseline)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        if hist.record(step, loss.item(), args, lambda: evaluate(model, test), bar):
            break
    return hist.finish(bar, args, f"RNN-T on synthetic digits, PyTorch ({mode})")


if __name__ == "__main__":
    main()
