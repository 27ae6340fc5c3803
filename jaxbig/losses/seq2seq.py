"""Teacher-forced sequence-to-sequence loss (encoder-decoder models, jaxbig.models.t5).

batch (jaxbig.data.pipelines.seq2seq):
    enc_tokens int32 [B, S], enc_mask [B, S]       the prompt (1 = a real token)
    dec_inputs int32 [B, T]                         decoder_start_id, then the targets
                                                    shifted right by one
    dec_targets int32 [B, T], dec_mask [B, T]       the response + eos (1 = a real target)

The model reads (enc_tokens, enc_mask, dec_inputs, dec_mask) -> logits [B, T, V]; the loss
is the cross entropy of dec_targets at the positions where dec_mask is 1, in nats per
target token (padding does not enter it; sums and counts, jaxbig/aggregate.py), plus an optional z-loss
`z_loss * mean(logsumexp(logits)^2)` over the same positions.

`config` (the `loss` section): name='seq2seq', z_loss (float, 0 = off).
Metrics: loss, perplexity (exp loss), token_accuracy (argmax = target at the counted
positions), sequence_accuracy (fraction of rows whose every counted target is the argmax:
teacher-forced exact match).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.losses.autoregressive import target_mask, token_cross_entropy, with_z_loss


def model_inputs(batch):
    return (batch['enc_tokens'], batch['enc_mask'], batch['dec_inputs'], batch['dec_mask'])


def sequence_accuracy(logits, targets, mask):
    """Mean over rows with at least one counted target of "every counted target is the
    argmax" (rows without one do not count). logits [B, T, V]; targets, mask [B, T]."""
    wrong = ((jnp.argmax(logits, axis=-1) != targets) & (mask > 0)).any(axis=-1)
    rows = (mask > 0).any(axis=-1).astype(jnp.float32)
    return aggregate.mean((~wrong).astype(jnp.float32), rows)


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics) for one batch; see the module docstring for shapes."""
    logits = apply_fn({'params': params}, *model_inputs(batch), train=train, rngs=rngs)
    mask = target_mask(batch, 'dec_mask')
    total, metrics = with_z_loss(
        token_cross_entropy(logits, batch['dec_targets'], mask), config.get('z_loss', 0.0))
    metrics['sequence_accuracy'] = sequence_accuracy(logits, batch['dec_targets'], mask)
    return total, metrics
