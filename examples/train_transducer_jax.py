"""Train a small RNN-T model on synthetic spoken digits with cutrans (JAX + optax).

    python examples/train_transducer_jax.py                   # ~1 min on 2 CPU cores
    python examples/train_transducer_jax.py --plot curve.png  # + loss / error-rate plot
    python examples/train_transducer_jax.py --baseline        # batched joint + rnnt_loss
    python examples/train_transducer_jax.py --quick           # 150 steps, ~15 s (CI)

The same model and task as ``train_transducer_torch.py`` (see ``digits.py``), written in
plain JAX: a convolutional encoder, an embedding + LSTM prediction network (``lax.scan``),
and ``cutrans.interop.jax.transducer_loss`` -- joint network, output layer, log-softmax
and RNN-T loss fused, in row chunks of at most ``--workspace-mb``, never a
``(B, T, U+1, V)`` array. ``--baseline`` computes the batched joint and
``cutrans.interop.jax.rnnt_loss`` on those logits instead. Batches are padded to fixed
shapes so that ``jit`` compiles the training step and the greedy decoder once.
"""
from __future__ import annotations

import argparse
import functools
import os

# the loss runs NumPy on the host inside the jitted step: keep OpenBLAS from competing
# with XLA's threads for the 2 cores (set before NumPy is imported)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import digits  # noqa: E402
from cutrans.interop.jax import rnnt_loss, transducer_loss  # noqa: E402


def init_params(key, hidden: int = 128, joint: int = 96, embed: int = 32):
    """Uniform(+-1/sqrt(fan_in)) weights (PyTorch's default initialisation)."""
    F, V = digits.FEAT_DIM, digits.VOCAB
    shapes = {"conv1": ((5, F, hidden), 5 * F), "conv1_b": ((hidden,), 5 * F),
              "conv2": ((5, hidden, hidden), 5 * hidden), "conv2_b": ((hidden,), 5 * hidden),
              "enc_proj": ((hidden, joint), hidden), "enc_proj_b": ((joint,), hidden),
              "lstm_x": ((embed, 4 * hidden), hidden), "lstm_h": ((hidden, 4 * hidden), hidden),
              "lstm_b": ((4 * hidden,), hidden),
              "pred_proj": ((hidden, joint), hidden), "pred_proj_b": ((joint,), hidden),
              "out": ((V, joint), joint), "out_b": ((V,), joint)}
    keys = jax.random.split(key, len(shapes) + 1)
    params = {name: jax.random.uniform(k, shape, minval=-fan ** -0.5, maxval=fan ** -0.5)
              for k, (name, (shape, fan)) in zip(keys, shapes.items())}
    params["embed"] = jax.random.normal(keys[-1], (V, embed))
    return params


def encode(p, feats):                                     # (B, T, F) -> (B, T, joint)
    def conv(x, w, b):
        return jax.lax.conv_general_dilated(x, w, (1,), "SAME",
                                            dimension_numbers=("NWC", "WIO", "NWC")) + b
    h = jax.nn.relu(conv(feats, p["conv1"], p["conv1_b"]))
    h = jax.nn.relu(conv(h, p["conv2"], p["conv2_b"]))
    return h @ p["enc_proj"] + p["enc_proj_b"]


def lstm_step(p, state, token):                           # token (B,) -> output (B, joint)
    h, c = state
    i, f, g, o = jnp.split(p["embed"][token] @ p["lstm_x"] + h @ p["lstm_h"] + p["lstm_b"], 4,
                           axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h @ p["pred_proj"] + p["pred_proj_b"]


def predict(p, targets):                                  # (B, U) -> (B, U+1, joint)
    tokens = jnp.pad(targets, ((0, 0), (1, 0)))           # blank (0) is the start symbol
    zeros = jnp.zeros((targets.shape[0], p["lstm_h"].shape[0]))
    _, out = jax.lax.scan(functools.partial(lstm_step, p), (zeros, zeros), tokens.T)
    return out.transpose(1, 0, 2)


@functools.partial(jax.jit, static_argnames="max_symbols")
def greedy_decode(p, feats, feat_lens, max_symbols: int = 3):
    """Greedy search: at each frame emit argmax tokens until blank (at most ``max_symbols``).
    Returns ``(B, T, max_symbols)`` tokens, 0 where nothing was emitted."""
    enc = encode(p, feats)
    B = enc.shape[0]
    zeros = jnp.zeros((B, p["lstm_h"].shape[0]))
    state, pred = lstm_step(p, (zeros, zeros), jnp.zeros(B, jnp.int32))

    def frame(carry, inputs):
        state, pred = carry
        e, active = inputs                                # (B, joint), (B,)
        out = []
        for _ in range(max_symbols):
            k = jnp.argmax(jnp.tanh(e + pred) @ p["out"].T + p["out_b"], axis=-1)
            active = active & (k != digits.BLANK)
            new_state, new_pred = lstm_step(p, state, k)
            state = jax.tree.map(lambda n, s: jnp.where(active[:, None], n, s), new_state, state)
            pred = jnp.where(active[:, None], new_pred, pred)
            out.append(jnp.where(active, k, 0))
        return (state, pred), jnp.stack(out, axis=-1)

    active = jnp.arange(enc.shape[1])[:, None] < feat_lens[None, :]   # (T, B)
    _, tokens = jax.lax.scan(frame, (state, pred), (enc.transpose(1, 0, 2), active))
    return tokens.transpose(1, 0, 2)


def evaluate(p, test) -> float:
    tokens = np.asarray(greedy_decode(p, test[0], test[1])).reshape(len(test[0]), -1)
    return digits.token_error_rate([list(t[t != 0]) for t in tokens], test[2], test[3])


def joint_loss(enc, pred, w, b, feat_lens, targets, target_lens, baseline, workspace):
    if not baseline:                                      # fused, memory-bounded
        return transducer_loss(enc, pred, w, b, targets, feat_lens, target_lens,
                               blank=digits.BLANK, max_workspace_bytes=workspace)
    logits = jnp.tanh(enc[:, :, None] + pred[:, None]) @ w.T + b       # (B, T, U+1, V)
    return rnnt_loss(logits, targets, feat_lens, target_lens, blank=digits.BLANK)


def loss_fn(p, feats, feat_lens, targets, target_lens, baseline=False, workspace=1 << 20):
    return joint_loss(encode(p, feats), predict(p, targets), p["out"], p["out_b"], feat_lens,
                      targets, target_lens, baseline, workspace)


def memory_report(params, batch, workspace):
    """Peak memory of one jitted loss + gradient on ``batch``, fused vs batched joint, for
    the whole model and for the joint + loss alone (on fixed encoder / predictor outputs)."""
    feats, feat_lens, targets, target_lens = batch
    enc, pred = encode(params, feats), predict(params, targets)
    (B, T, J), U1 = enc.shape, pred.shape[1]
    print(f"peak memory of one loss + gradient (B={B}, T={T}, U+1={U1}, joint {J}, V="
          f"{digits.VOCAB}; the batched joint builds (B,T,U+1,{J}) arrays of "
          f"{B * T * U1 * J * 4 / 2**20:.1f} MiB and (B,T,U+1,V) of "
          f"{B * T * U1 * digits.VOCAB * 4 / 2**20:.1f} MiB):")
    for name, baseline in (("cutrans transducer_loss", False), ("batched joint + rnnt_loss", True)):
        kw = dict(baseline=baseline, workspace=workspace)
        whole = jax.jit(jax.value_and_grad(functools.partial(loss_fn, **kw)))
        joint = jax.jit(jax.value_and_grad(functools.partial(joint_loss, **kw), (0, 1, 2, 3)))
        peaks = []
        for f, args in ((whole, (params, *batch)),
                        (joint, (enc, pred, params["out"], params["out_b"], *batch[1:]))):
            # the least of 3 calls after a warm-up (which compiles and fills allocator caches)
            results = [digits.peak_memory(lambda: jax.block_until_ready(f(*args)))
                       for _ in range(4)]
            peaks.append(None if None in results else min(results[1:]))
        print(f"  {name:26s}: " + ("n/a (needs Linux /proc)" if None in peaks else
                                   f"whole step {peaks[0] / 2**20:6.1f} MiB, joint + loss "
                                   f"alone {peaks[1] / 2**20:6.1f} MiB"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args = digits.parse_training_args(ap, argv)

    rng = np.random.default_rng(args.seed)
    params = init_params(jax.random.key(args.seed))
    # constant learning rate, then a linear decay to 0 over the second half
    lr = optax.join_schedules([optax.constant_schedule(args.lr),
                               optax.linear_schedule(args.lr, 0.0, args.steps - args.steps // 2)],
                              [args.steps // 2])
    opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(lr, weight_decay=0.01))
    opt_state = opt.init(params)
    loss_and_grad = jax.value_and_grad(functools.partial(
        loss_fn, baseline=args.baseline, workspace=int(args.workspace_mb * 2**20)))

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = loss_and_grad(params, *batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    test = digits.held_out_set(fixed_shape=True)
    if not args.no_memory:
        memory_report(params, digits.make_batch(np.random.default_rng(99), args.batch_size,
                                                fixed_shape=True), int(args.workspace_mb * 2**20))
    if args.steps == 0:
        return None
    mode = "batched joint + rnnt_loss" if args.baseline else "cutrans transducer_loss"
    print(f"training ({mode}): {args.steps} steps of {args.batch_size} utterances")
    hist = digits.History(evaluate(params, test))
    bar = digits.Progress(args.steps)
    for step in range(1, args.steps + 1):
        batch = digits.make_batch(rng, args.batch_size, fixed_shape=True)
        params, opt_state, loss = train_step(params, opt_state, batch)
        if hist.record(step, float(loss), args, lambda: evaluate(params, test), bar):
            break
    return hist.finish(bar, args, f"RNN-T on synthetic digits, JAX + optax ({mode})")


if __name__ == "__main__":
    main()
