"""Supervised heads: softmax cross-entropy with label smoothing, or mean-squared error.

batch: inputs (token ids int32[B, T] with mask float32[B, T], or features float32[B, E]) or
       image float32[B, H, W, C],
       label int32[B] (classes) or float32[B] / [B, K] (regression targets).
config (the `loss` section): name='classification', kind='softmax' | 'mse',
       label_smoothing (float in [0, 1), softmax only).
Metrics: loss, accuracy (softmax) — per batch means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxbig.config import ConfigError


def model_inputs(batch):
    """(inputs, mask) for token sequences, (image,) for images, (inputs,) for features."""
    if 'image' in batch:
        return (batch['image'],)
    return (batch['inputs'], batch['mask']) if 'mask' in batch else (batch['inputs'],)


def smoothed_cross_entropy(logits, labels, smoothing: float = 0.0):
    """Mean CE of logits [B, K] against int labels [B], targets (1-s)·onehot + s/K."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    logits = apply_fn({'params': params}, *model_inputs(batch), train=train, rngs=rngs)
    kind = config.get('kind', 'softmax')
    if kind == 'softmax':
        smoothing = config.get('label_smoothing', 0.0)
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f'loss.label_smoothing={smoothing}: must be in [0, 1)')
        loss = smoothed_cross_entropy(logits, batch['label'], smoothing)
        accuracy = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32).mean()
        return loss, {'loss': loss, 'accuracy': accuracy}
    if kind == 'mse':
        target = batch['label'].astype(jnp.float32).reshape(logits.shape)
        loss = jnp.mean(jnp.square(logits.astype(jnp.float32) - target))
        return loss, {'loss': loss}
    raise ConfigError(f"loss.kind={kind!r}: expected 'softmax' or 'mse'")
