"""SimCLR's NT-Xent (normalised temperature-scaled cross-entropy) over 2N views.

batch: view1, view2 float32 [N, H, W, C] (two augmentations of the same N examples).
The model maps the 2N views to z [2N, D]; z is L2-normalised and, for each of the 2N rows,

    loss_i = -log( exp(s_ip / tau) / sum_{k != i} exp(s_ik / tau) ),   s = z z^T

where p is i's other view (i <-> i + N) and the sum runs over the other 2N - 1 views
(self-similarity excluded). The loss is the mean over the 2N rows (Chen et al. 2020, eq. 1).
The batch here is the global batch: under jit over a sharded batch every view meets the
negatives of every device and host; under `parallel.strategy='pmap'` each device gathers
every device's embeddings (`pmap.global_rows`) and computes the same global loss.

`config` (the experiment's `loss` section): name='contrastive', temperature (tau > 0).
The loss couples the whole batch, so it is reported as Mean(2N * loss, 2N) (jaxbig/aggregate.py).
Under gradient accumulation every view still meets the whole batch's negatives: the step
embeds micro-batch by micro-batch (`embed`), scores all embeddings at once
(`loss_from_embeddings`) and backpropagates each micro-batch through the cached
embeddings' gradients (a gradient cache, as open_clip's --accum-freq).
An evaluator's padding rows (`example_mask` 0) are neither anchors nor negatives.
Metrics: loss, pos_sim (mean cosine of positive pairs), neg_sim (mean over negatives),
sim_gap = pos_sim - neg_sim, accuracy (positive is the most similar other view),
temperature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.pmap import global_rows, replica_share


def l2_normalize(x, eps=1e-12):
    """x [..., D] / ||x||, in float32 (or wider, if x is wider)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps**2))


def nt_xent(z1, z2, temperature: float, valid=None):
    """z1, z2 [N, D] (any scale; normalised here) -> (scalar loss, stats dict).

    valid: bool [N] (None = all): pairs that take part; the others are neither anchors nor
    negatives (an evaluator's padding rows)."""
    z = l2_normalize(jnp.concatenate([z1, z2], axis=0))  # [2N, D]
    n2 = z.shape[0]
    valid = jnp.ones((n2,), bool) if valid is None else jnp.concatenate([valid, valid])
    sim = z @ z.T  # [2N, 2N] cosine similarities
    positive = (jnp.arange(n2) + n2 // 2) % n2
    self_mask = jnp.eye(n2, dtype=bool)
    logits = jnp.where(self_mask | ~valid[None, :], -jnp.inf, sim / temperature)
    pos_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
    rows = valid.astype(jnp.float32)
    num_rows = jnp.maximum(rows.sum(), 1.0)
    per_row = jnp.where(valid, jax.nn.logsumexp(logits, axis=1) - pos_logit, 0.0)
    loss = per_row.sum() / num_rows
    pos_mask = jax.nn.one_hot(positive, n2, dtype=bool) & valid[:, None]
    neg_mask = ~(self_mask | pos_mask) & valid[:, None] & valid[None, :]
    pos_sim = jnp.sum(jnp.where(pos_mask, sim, 0)) / num_rows
    neg_sim = jnp.sum(jnp.where(neg_mask, sim, 0)) / jnp.maximum(neg_mask.sum(), 1)
    accuracy = jnp.sum((jnp.argmax(logits, axis=1) == positive) * rows) / num_rows
    stats = dict(pos_sim=pos_sim, neg_sim=neg_sim, sim_gap=pos_sim - neg_sim, accuracy=accuracy)
    return loss, stats


COUPLES_EXAMPLES = True  # the loss of a row depends on the other rows (its negatives)


def model_inputs(batch):
    return (batch['view1'],)


def embed(apply_fn, params, batch, rngs, config, *, train: bool = True) -> dict:
    """The per-row embeddings the loss reads: {'rows': {'z1', 'z2': [N, D]}, 'shared': {}}.
    Split from the loss so gradient accumulation can embed micro-batch by micro-batch and
    still score every view against the whole batch (jaxbig/step.py, gradient cache)."""
    n = batch['view1'].shape[0]
    views = jnp.concatenate([batch['view1'], batch['view2']], axis=0)  # [2N, H, W, C]
    z = apply_fn({'params': params}, views, train=train, rngs=rngs)
    return {'rows': {'z1': z[:n], 'z2': z[n:]}, 'shared': {}}


def loss_from_embeddings(emb, batch, config):
    """(loss, metrics) of `embed`'s output for the whole batch (rows in any order)."""
    temperature = config.get('temperature', 0.1)
    z1, z2 = emb['rows']['z1'], emb['rows']['z2']
    valid = global_rows(aggregate.example_mask(batch, z1.shape[0])) > 0
    loss, stats = nt_xent(global_rows(z1), global_rows(z2), temperature, valid)
    # the global batch's views (the objective couples them all); under pmap every device
    # holds the same global loss and reports its share of the count
    views_counted = 2.0 * valid.sum() * replica_share()
    metrics = {k: aggregate.of_value(v, views_counted) for k, v in dict(stats, loss=loss).items()}
    metrics['temperature'] = aggregate.constant(temperature)
    return aggregate.of_value(loss, views_counted), metrics


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics); see the module docstring."""
    emb = embed(apply_fn, params, batch, rngs, config, train=train)
    return loss_from_embeddings(emb, batch, config)
