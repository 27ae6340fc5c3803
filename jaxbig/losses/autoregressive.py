"""Next-token language-modelling loss.

batch: inputs int32[batch, seq], targets int32[batch, seq] (inputs shifted by one),
              mask float32[batch, seq] (1 = a real target, 0 = padding);
       optional positions, segment_ids int32[batch, seq] (examples packed into rows,
              jaxbig.data.conditional) are passed to the model, which then keeps
              attention within each example.
Loss is the mean cross-entropy in nats per target token, plus an optional z-loss
`z_loss * mean(logsumexp(logits)^2)` that keeps the softmax normaliser near 1 (PaLM).

`config` (the experiment's `loss` section): name='autoregressive', z_loss (float, 0 = off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits, targets, mask):
    """Masked mean next-token statistics.

    Args:
        logits: [batch, seq, vocab], any float dtype (computed in float32).
        targets: int[batch, seq]. mask: [batch, seq], 1 for real targets.
    Returns:
        dict with 'loss' (nats/token), 'accuracy', 'log_z_sq' (mean logsumexp^2), 'tokens'.
    """
    logits = logits.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    tokens = jnp.maximum(mask.sum(), 1.0)
    nll = ((log_z - target_logit) * mask).sum() / tokens
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        'loss': nll,
        'accuracy': (correct * mask).sum() / tokens,
        'log_z_sq': (jnp.square(log_z) * mask).sum() / tokens,
        'tokens': mask.sum(),
    }


def model_inputs(batch):
    return (batch['inputs'],)


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics) for one batch; see module docstring for shapes."""
    packed = {k: batch[k] for k in ('positions', 'segment_ids') if k in batch}
    logits = apply_fn({'params': params}, batch['inputs'], train=train, rngs=rngs, **packed)
    return with_z_loss(token_cross_entropy(logits, batch['targets'], batch['mask']),
                       config.get('z_loss', 0.0))


def with_z_loss(stats, z_loss: float) -> tuple:
    """(total loss, metrics) from `token_cross_entropy`'s stats: the mean cross-entropy
    plus z_loss * mean log(Z)^2 when z_loss > 0; metrics loss, perplexity, token_accuracy
    (and z_loss)."""
    total = stats['loss'] + z_loss * stats['log_z_sq'] if z_loss else stats['loss']
    metrics = {
        'loss': stats['loss'],
        'perplexity': jnp.exp(stats['loss']),
        'token_accuracy': stats['accuracy'],
    }
    if z_loss:
        metrics['z_loss'] = z_loss * stats['log_z_sq']
    return total, metrics
