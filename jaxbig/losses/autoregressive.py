"""Next-token language-modelling loss.

batch: inputs int32[batch, seq], targets int32[batch, seq] (inputs shifted by one),
              mask float32[batch, seq] (1 = a real target, 0 = padding);
       optional positions, segment_ids int32[batch, seq] (examples packed into rows,
              jaxbig.data.pipelines.conditional) are passed to the model, which then keeps
              attention within each example.
Loss is the cross-entropy in nats per target token, plus an optional z-loss
`z_loss * logsumexp(logits)^2` per target that keeps the softmax normaliser near 1 (PaLM),
reported as sums over the valid targets and their count (jaxbig/aggregate.py): the step
divides once per update, so every valid target of the global batch weighs the same.

A Mixture-of-Experts model adds its load-balancing and router z-losses, counted over the
same targets (jaxbig.losses.moe_aux: moe_balance, moe_z_loss, moe_balance_group).

`config` (the experiment's `loss` section): name='autoregressive', z_loss (float, 0 = off),
logits_chunk (int, 0 = off): the model's head is applied to `logits_chunk` positions at a
time and recomputed in the backward pass, so the float32 [batch, seq, vocab] logits and
their gradient never exist at once (a GPT's memory at large vocabularies: Llama 3's 128k
logits at 8k tokens are 4 GB per row). A memory switch only: the same sums in chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.config import ConfigError
from jaxbig.losses import moe_aux


def token_cross_entropy(logits, targets, mask):
    """Masked next-token statistics as sums and counts (jaxbig/aggregate.py).

    Args:
        logits: [batch, seq, vocab], any float dtype (computed in float32).
        targets: int[batch, seq]. mask: [batch, seq], 1 for real targets.
    Returns:
        dict of Means over the masked targets — 'loss' (nats/target), 'accuracy',
        'log_z_sq' (logsumexp^2) — and Sum 'targets' (how many were counted).
    """
    logits = logits.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        'loss': aggregate.mean(log_z - target_logit, mask),
        'accuracy': aggregate.mean(correct, mask),
        'log_z_sq': aggregate.mean(jnp.square(log_z), mask),
        'targets': aggregate.Sum(mask.sum()),
    }


def chunked_token_cross_entropy(logits_fn, features, targets, mask, chunk: int):
    """`token_cross_entropy(logits_fn(features), targets, mask)`, `chunk` positions at a time.

    Args:
        logits_fn: features [batch, c, embed] -> logits [batch, c, vocab] (the model's head).
        features: [batch, seq, embed]; targets, mask: [batch, seq]; chunk: positions per
            call (seq is padded up to a multiple with masked-out positions).
    Only one chunk's logits exist at a time: a `lax.scan` over the chunks adds their sums
    and counts, and `jax.checkpoint` recomputes each chunk's logits in the backward pass
    instead of keeping them. Equal to the whole-sequence statistics up to float32
    summation order.
    """
    rows, seq = targets.shape
    n = -(-seq // chunk)
    pad = n * chunk - seq
    if pad:
        features = jnp.pad(features, ((0, 0), (0, pad), (0, 0)))
        targets, mask = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, mask))

    def split(x):  # [rows, n * chunk, ...] -> [n, rows, chunk, ...]
        return jnp.moveaxis(x.reshape(rows, n, chunk, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(f, t, m):
        return token_cross_entropy(logits_fn(f), t, m)

    xs = tuple(split(x) for x in (features, targets, mask.astype(jnp.float32)))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(one, *(x[0] for x in xs)))
    total, _ = jax.lax.scan(lambda acc, x: (aggregate.add(acc, one(*x)), None), zeros, xs)
    return total


def check(config) -> None:
    """loss.logits_chunk needs a model with separate features / logits methods (the GPT)."""
    chunk = config.loss.get('logits_chunk', 0)
    if chunk < 0 or (chunk and config.model.get('name') != 'gpt'):
        raise ConfigError(f'loss.logits_chunk={chunk}: a number of positions >= 0, and > 0 only '
                          f"for model.name='gpt' (this model is {config.model.get('name')!r})")


def target_mask(batch, key: str = 'mask'):
    """batch[key] [B, T] as float32, zero on an evaluator's padding rows (example_mask)."""
    mask = jnp.asarray(batch[key], jnp.float32)
    return mask * aggregate.example_mask(batch, mask.shape[0])[:, None]


def model_inputs(batch):
    return (batch['inputs'],)


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics) for one batch; see module docstring for shapes."""
    packed = {k: batch[k] for k in ('positions', 'segment_ids') if k in batch}
    mask = target_mask(batch)
    chunk = config.get('logits_chunk', 0)
    if chunk:  # the head applied chunk by chunk inside the loss
        features, sown = apply_fn({'params': params}, batch['inputs'], train=train, rngs=rngs,
                                  mutable=['intermediates'], method='features', **packed)
        # each chunk's call gathers the head's (bf16) weights afresh: gathering them once
        # before the scan sends less but keeps the gathered float32 weights and their
        # gradient alive through it (Llama-3-70B on v5p-256: 69.4 GB against 61.1 GB)
        stats = chunked_token_cross_entropy(
            lambda f: apply_fn({'params': params}, f, method='logits'), features,
            batch['targets'], mask, chunk)
    else:
        logits, sown = apply_fn({'params': params}, batch['inputs'], train=train, rngs=rngs,
                                mutable=['intermediates'], **packed)
        stats = token_cross_entropy(logits, batch['targets'], mask)
    loss, metrics = with_z_loss(stats, config.get('z_loss', 0.0))
    moe = moe_aux.stats_of(sown)  # a Mixture-of-Experts model's routing: its aux losses
    return (loss, metrics) if moe is None else moe_aux.add_to(loss, metrics, moe, mask, config)


def with_z_loss(stats, z_loss: float) -> tuple:
    """(total loss, metrics) from `token_cross_entropy`'s stats: the cross-entropy plus
    z_loss * log(Z)^2 when z_loss > 0, per target; metrics loss, perplexity (exp of the
    aggregated loss), token_accuracy, targets (and z_loss)."""
    nll = stats['loss']
    total = nll
    if z_loss:
        total = aggregate.Mean(nll.total + z_loss * stats['log_z_sq'].total, nll.count)
    metrics = {
        'loss': nll,
        'perplexity': aggregate.exp_of(nll),
        'token_accuracy': stats['accuracy'],
        'targets': stats['targets'],
    }
    if z_loss:
        metrics['z_loss'] = aggregate.Mean(z_loss * stats['log_z_sq'].total, nll.count)
    return total, metrics
