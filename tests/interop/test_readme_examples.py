"""The README's PyTorch and JAX training steps, verbatim (keep them in sync)."""
import pytest


def test_readme_pytorch_training_step():
    pytest.importorskip("torch")
    # --- README: PyTorch -------------------------------------------------------------
    import torch
    from cutrans.interop.torch import TransducerLoss, rnnt_loss

    B, T, U, H, V = 2, 50, 10, 64, 32           # batch, frames, labels, joint dim, vocab
    encoder = torch.nn.LSTM(80, H, batch_first=True)
    embed = torch.nn.Embedding(V, H)             # a (tiny) prediction network
    loss_fn = TransducerLoss(torch.nn.Linear(H, V), blank=0)   # owns the output layer
    params = [*encoder.parameters(), *embed.parameters(), *loss_fn.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)

    feats = torch.randn(B, T, 80)
    targets = torch.randint(1, V, (B, U), dtype=torch.int32)
    feat_lengths = torch.tensor([T, T - 7], dtype=torch.int32)
    target_lengths = torch.tensor([U, U - 3], dtype=torch.int32)

    enc, _ = encoder(feats)                                       # (B, T, H)
    sos = torch.nn.functional.pad(targets, (1, 0)).long()        # blank as start symbol
    pred = embed(sos)                                             # (B, U+1, H)
    loss = loss_fn(enc, pred, targets, feat_lengths, target_lengths)  # no (B,T,U+1,V) tensor
    opt.zero_grad()
    loss.backward()
    opt.step()

    # or, on joint logits you computed yourself (torchaudio.functional.rnnt_loss drop-in):
    logits = torch.randn(B, T, U + 1, V, requires_grad=True)
    rnnt_loss(logits, targets, feat_lengths, target_lengths, blank=0).backward()
    # --- end README --------------------------------------------------------------------
    assert torch.isfinite(loss) and logits.grad.shape == logits.shape
    assert loss_fn.output_layer.weight.grad is not None


def test_readme_jax_training_step():
    pytest.importorskip("jax")
    # --- README: JAX -------------------------------------------------------------------
    import jax
    import jax.numpy as jnp
    from cutrans.interop.jax import transducer_loss

    B, T, U, H, V = 2, 50, 10, 64, 32
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"enc": jax.random.normal(k1, (80, H)) * 0.1,
              "embed": jax.random.normal(k2, (V, H)) * 0.1,
              "w": jax.random.normal(k3, (V, H)) * 0.1, "b": jnp.zeros(V)}
    feats = jax.random.normal(k4, (B, T, 80))
    targets = jnp.tile(jnp.arange(1, U + 1, dtype=jnp.int32), (B, 1))
    feat_lengths = jnp.array([T, T - 7], dtype=jnp.int32)
    target_lengths = jnp.array([U, U - 3], dtype=jnp.int32)

    def loss_fn(p, feats, targets, feat_lengths, target_lengths):
        enc = jnp.tanh(feats @ p["enc"])                                  # (B, T, H)
        pred = p["embed"][jnp.pad(targets, ((0, 0), (1, 0)))]            # (B, U+1, H)
        return transducer_loss(enc, pred, p["w"], p["b"], targets, feat_lengths,
                               target_lengths, blank=0)

    @jax.jit
    def train_step(p, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
        return loss, jax.tree.map(lambda x, g: x - 1e-2 * g, p, grads)

    loss, params = train_step(params, feats, targets, feat_lengths, target_lengths)
    # --- end README --------------------------------------------------------------------
    assert jnp.isfinite(loss)


def test_readme_numpy_and_variant_snippets_run():
    """The README's first example and its variants example, executed from the README."""
    import os
    import re

    import numpy as np
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    variants = [b for b in blocks if 'variant="tdt"' in b]
    assert blocks and len(variants) == 1
    scope = {}
    exec(blocks[0] + variants[0], scope)  # noqa: S102 - the README's own code
    assert np.isfinite(scope["loss"]) and scope["loss"] > 0
