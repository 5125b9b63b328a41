"""The synthetic "spoken digits" task shared by the training examples (NumPy only).

An utterance is a random digit string (3-8 digits). Every digit ``d`` is a short
*trajectory* through feature space: over its random duration (2-6 frames) the frame
glides from an onset prototype ``onset[d]`` to an offset prototype ``offset[d]``. Between
digits there may be a pause (1-3 silent frames), and there is 0-3 frames of silence at
both ends. Each utterance gets a random gain and every frame Gaussian noise. So:

* durations are unknown: the model has to learn an alignment (what RNN-T is for);
* a repeated digit ("33") is only separable by its jump back from offset to onset
  prototype, which needs context across frames -- a frame classifier cannot do it;
* noise and gain make single frames unreliable (a nearest-prototype classifier of single
  frames gets ~6% of the digit frames wrong).

Labels: blank = 0, digit ``d`` = token ``d + 1`` (vocabulary 11). The prototypes are fixed
by ``TASK_SEED`` (the task does not change with the training seed); the held-out test set
by ``TEST_SEED``. Also here: edit distance / token error rate, a progress bar on stderr
and the loss / error-rate plot, shared by ``train_transducer_torch.py`` and
``train_transducer_jax.py``.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import sys
import time

import numpy as np

FEAT_DIM = 20
BLANK = 0
VOCAB = 11                  # blank + 10 digits
MIN_DIGITS, MAX_DIGITS = 3, 8
MIN_DUR, MAX_DUR = 2, 6     # frames per digit
MAX_PAUSE, MAX_EDGE = 3, 3  # silent frames between digits / at either end
MAX_FRAMES = MAX_DIGITS * MAX_DUR + (MAX_DIGITS - 1) * MAX_PAUSE + 2 * MAX_EDGE  # 75
NOISE = 0.8
TASK_SEED, TEST_SEED = 1234, 4321

_protos = np.random.default_rng(TASK_SEED).standard_normal((2, 10, FEAT_DIM))
ONSET, OFFSET = _protos.astype(np.float32)


def utterance(rng: np.random.Generator):
    """One utterance: ``(features (T, FEAT_DIM) float32, digits (U,) int)``."""
    digits = rng.integers(0, 10, size=rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
    frames = [np.zeros((rng.integers(0, MAX_EDGE + 1), FEAT_DIM), np.float32)]
    for i, d in enumerate(digits):
        if i and rng.random() < 0.5:
            frames.append(np.zeros((rng.integers(1, MAX_PAUSE + 1), FEAT_DIM), np.float32))
        w = np.linspace(0.0, 1.0, rng.integers(MIN_DUR, MAX_DUR + 1), dtype=np.float32)[:, None]
        frames.append((1 - w) * ONSET[d] + w * OFFSET[d])
    frames.append(np.zeros((rng.integers(0, MAX_EDGE + 1), FEAT_DIM), np.float32))
    x = np.concatenate(frames) * rng.uniform(0.7, 1.3)
    x += NOISE * rng.standard_normal(x.shape)
    return x.astype(np.float32), digits


def make_batch(rng: np.random.Generator, batch_size: int, fixed_shape: bool = False):
    """A padded batch: ``feats (B, T, F) float32, feat_lens (B,), targets (B, U), target_lens
    (B,)`` (int32; targets are tokens 1..10, padded with 0). ``T``/``U`` are the batch's
    maxima, or ``MAX_FRAMES``/``MAX_DIGITS`` with ``fixed_shape`` (no recompiles under jit)."""
    utts = [utterance(rng) for _ in range(batch_size)]
    T = MAX_FRAMES if fixed_shape else max(len(x) for x, _ in utts)
    U = MAX_DIGITS if fixed_shape else max(len(d) for _, d in utts)
    feats = np.zeros((batch_size, T, FEAT_DIM), np.float32)
    targets = np.zeros((batch_size, U), np.int32)
    for b, (x, d) in enumerate(utts):
        feats[b, :len(x)] = x
        targets[b, :len(d)] = d + 1
    feat_lens = np.array([len(x) for x, _ in utts], np.int32)
    target_lens = np.array([len(d) for _, d in utts], np.int32)
    return feats, feat_lens, targets, target_lens


def held_out_set(size: int = 256, fixed_shape: bool = False):
    """The fixed held-out set (the same for every seed)."""
    return make_batch(np.random.default_rng(TEST_SEED), size, fixed_shape)


def edit_distance(a, b) -> int:
    """Levenshtein distance between two token sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def token_error_rate(hyps, targets, target_lens) -> float:
    """Sum of edit distances / number of reference tokens."""
    refs = [list(t[:n]) for t, n in zip(np.asarray(targets), np.asarray(target_lens))]
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs)) / sum(map(len, refs))


def peak_memory(fn) -> int | None:
    """Peak growth of the resident set while ``fn()`` runs, in bytes (Linux only, else None):
    free heap pages go back to the OS (``malloc_trim``), the kernel's high-water mark
    ``VmHWM`` is reset (``/proc/self/clear_refs``), then ``fn()`` runs. It counts all
    memory the process touches (framework tensors, NumPy arrays of the loss, temporaries)."""
    def status(key):
        return int(re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read())[1]) << 10
    try:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
    except OSError:
        return None
    fn()
    return status("VmHWM") - before


class Progress:
    """A one-line progress bar on stderr: ``[#####.....] step/steps  key=value ...``."""

    def __init__(self, total: int, width: int = 30, stream=sys.stderr):
        self.total, self.width, self.stream = total, width, stream
        self.t0 = time.perf_counter()

    def update(self, step: int, **info):
        done = int(self.width * step / self.total)
        fields = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in info.items())
        self.stream.write(f"\r[{'#' * done}{'.' * (self.width - done)}] {step}/{self.total} "
                          f"{time.perf_counter() - self.t0:5.0f}s  {fields}   ")
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def _count(least: int):
    def parse(text: str) -> int:
        n = int(text)
        if n < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text}")
        return n
    return parse


def parse_training_args(ap, argv=None):
    """The training examples' common options (added to ``ap``), parsed."""
    ap.add_argument("--steps", type=_count(0), default=600, help="0: the memory comparison only")
    ap.add_argument("--batch-size", type=_count(1), default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=_count(1), default=50)
    ap.add_argument("--workspace-mb", type=float, default=1.0,
                    help="memory budget of the fused loss's row chunks (MiB)")
    ap.add_argument("--baseline", action="store_true",
                    help="batched (B,T,U+1,V) joint + rnnt_loss on logits instead")
    ap.add_argument("--quick", action="store_true", help="a short run (CI): 150 steps")
    ap.add_argument("--stop-below", type=float, default=0.0, metavar="TER",
                    help="stop once the test token error rate is below TER")
    ap.add_argument("--plot", metavar="FILE", help="save loss and error rate vs steps")
    ap.add_argument("--history", metavar="FILE", help="save the curves as JSON")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory comparison")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every = 150, 50
    return args


class History:
    """Training loss per step and test token error rate (TER) per evaluation, with times."""

    def __init__(self, ter0: float):
        self.t0 = time.perf_counter()
        self.steps, self.losses = [], []
        self.eval_steps, self.ters, self.times = [0], [ter0], [0.0]

    def loss(self, step: int, value: float):
        self.steps.append(step)
        self.losses.append(value)

    def ter(self, step: int, value: float):
        self.eval_steps.append(step)
        self.ters.append(value)
        self.times.append(time.perf_counter() - self.t0)

    def recent_loss(self, n: int = 20) -> float:
        return float(np.mean(self.losses[-n:]))

    def first_below(self, ter: float):
        """(step, seconds) of the first evaluation with TER < ter, or None."""
        return next(((s, t) for s, e, t in zip(self.eval_steps, self.ters, self.times)
                     if e < ter), None)

    def summary(self, goal: float = 0.10):
        secs = time.perf_counter() - self.t0
        print(f"{self.steps[-1]} steps in {secs:.0f} s: loss {np.mean(self.losses[:10]):.2f} "
              f"(first 10 steps) -> {np.mean(self.losses[-10:]):.2f} (last 10); test token "
              f"error rate {self.ters[0]:.1%} -> {self.ters[-1]:.1%}")
        hit = self.first_below(goal)
        print(f"test token error rate below {goal:.0%} " + (
            f"from step {hit[0]}, {hit[1]:.0f} s into training" if hit else "not reached"))

    def record(self, step: int, loss: float, args, evaluate, bar) -> bool:
        """One training step's bookkeeping: its loss, a test evaluation every
        ``args.eval_every`` steps (``evaluate()`` returns the TER), the progress bar;
        True when the TER went below ``args.stop_below`` (stop training)."""
        self.loss(step, loss)
        if step % args.eval_every == 0 or step == args.steps:
            self.ter(step, evaluate())
        bar.update(step, loss=self.recent_loss(), ter=self.ters[-1])
        return self.ters[-1] < args.stop_below

    def finish(self, bar, args, title: str):
        """Close the bar, print the summary, write the ``--plot`` / ``--history`` files."""
        bar.close()
        self.summary()
        if args.plot:
            self.plot(args.plot, title)
        if args.history:
            self.save(args.history)
        return self

    def save(self, path: str):
        with open(path, "w") as f:
            json.dump({"step": self.steps, "loss": self.losses, "eval_step": self.eval_steps,
                       "ter": self.ters, "seconds": self.times}, f)

    def plot(self, path: str, title: str):
        """Loss (left axis, log scale) and TER (right axis, capped at 100%) against steps."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(self.steps, self.losses, color="tab:blue", lw=1, label="training loss")
        ax.set(xlabel="step", ylabel="RNN-T loss (nats / utterance)", yscale="log",
               title=title)
        ax2 = ax.twinx()
        ax2.plot(self.eval_steps, [100 * min(e, 1.0) for e in self.ters], "o-",
                 color="tab:red", label="test token error rate (capped at 100%)")
        ax2.set(ylabel="token error rate (%)", ylim=(0, 101))
        fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88))
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(f"plot saved to {path}")
