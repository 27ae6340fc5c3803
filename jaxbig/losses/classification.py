"""Supervised heads: softmax cross-entropy with label smoothing, or mean-squared error.

batch: inputs (token ids int32[B, T] with mask float32[B, T], or features float32[B, E]) or
       image float32[B, H, W, C],
       label int32[B] (classes) or float32[B] / [B, K] (regression targets).
config (the `loss` section): name='classification', kind='softmax' | 'mse',
       label_smoothing (float in [0, 1), softmax only).
Metrics: loss, accuracy (softmax), examples — per-example sums and counts
(jaxbig/aggregate.py; an evaluator's padding rows, `example_mask` 0, count nothing). mse is
the mean over a row's K outputs, averaged over examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxbig import aggregate
from jaxbig.config import ConfigError


def model_inputs(batch):
    """(inputs, mask) for token sequences, (image,) for images, (inputs,) for features."""
    if 'image' in batch:
        return (batch['image'],)
    return (batch['inputs'], batch['mask']) if 'mask' in batch else (batch['inputs'],)


def smoothed_cross_entropy(logits, labels, smoothing: float = 0.0):
    """Per-example CE [B] of logits [B, K] against int labels [B], targets
    (1-s)·onehot + s/K."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    logits = apply_fn({'params': params}, *model_inputs(batch), train=train, rngs=rngs)
    rows = aggregate.example_mask(batch, logits.shape[0])
    kind = config.get('kind', 'softmax')
    if kind == 'softmax':
        smoothing = config.get('label_smoothing', 0.0)
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f'loss.label_smoothing={smoothing}: must be in [0, 1)')
        loss = aggregate.mean(smoothed_cross_entropy(logits, batch['label'], smoothing), rows)
        correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
        return loss, {'loss': loss, 'accuracy': aggregate.mean(correct, rows),
                      'examples': aggregate.Sum(rows.sum())}
    if kind == 'mse':
        target = batch['label'].astype(jnp.float32).reshape(logits.shape)
        err = jnp.square(logits.astype(jnp.float32) - target).reshape(logits.shape[0], -1)
        loss = aggregate.mean(err.mean(-1), rows)  # per example: mean over its outputs
        return loss, {'loss': loss, 'examples': aggregate.Sum(rows.sum())}
    raise ConfigError(f"loss.kind={kind!r}: expected 'softmax' or 'mse'")
