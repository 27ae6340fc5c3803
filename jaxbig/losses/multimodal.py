"""Image-text contrastive losses: CLIP (softmax) and SigLIP (sigmoid), chosen by `kind`.

batch: image float32 [N, H, W, C], text int32 [N, L]; pair i is (image i, text i). Audio-text
batches (`data.pipelines.audio_text`) carry audio float32 [N, samples] instead of image: it
feeds the first tower the same way (`tower_input`), and "image" below means that tower's embedding.
The model (`models.two_tower`) returns unit-norm embeddings x (images), y (texts)
[N, E], a learned logit scale t and bias b. With logits = exp(t) * x y^T (+ b):

  clip    (Radford et al. 2021) symmetric softmax cross-entropy:
          loss = ( CE_rows(logits, diag) + CE_cols(logits, diag) ) / 2,  t <= max_logit_scale
  siglip  (Zhai et al. 2023) pairwise sigmoid: z_ij = +1 if i == j else -1,
          loss = -(1 / N) sum_ij log sigmoid(z_ij * (exp(t) x_i.y_j + b))

The loss couples the whole batch, so it is reported as Mean(N * loss, N) (jaxbig/aggregate.py);
under gradient accumulation the step's gradient cache (`embed`, then `loss_from_embeddings`
on every micro-batch's embeddings at once) keeps the whole batch's negatives; an
evaluator's padding rows (`example_mask` 0) take no part. N is the global batch (under jit over a sharded batch the negatives come from every device
and host; under `parallel.strategy='pmap'` each device gathers every device's embeddings
with `pmap.global_rows`). `config`: name='multimodal', kind='clip' | 'siglip',
max_logit_scale (clip: CLIP clamps exp(t) at 100, so log 100). Metrics: loss, logit_scale
(= exp(t)), temperature (= 1 / exp(t)), logit_bias (siglip), pos_sim / neg_sim / sim_gap
(cosines of matching / non-matching pairs), i2t_accuracy and t2i_accuracy (in-batch top-1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxbig import aggregate
from jaxbig.pmap import global_rows, replica_share

KINDS = ('clip', 'siglip')


def clip_loss(image_emb, text_emb, logit_scale, valid=None):
    """image_emb, text_emb [N, E] unit-norm; logit_scale t (scalar, log inverse
    temperature); valid bool [N] (None = all): pairs that take part at all."""
    n = image_emb.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T  # [N, N]
    pair = valid[:, None] & valid[None, :]
    masked = jnp.where(pair, logits, -jnp.inf)
    labels = jnp.arange(n)
    diag = logits[labels, labels]
    row = jnp.where(valid, jax.nn.logsumexp(masked, axis=1) - diag, 0.0)
    col = jnp.where(valid, jax.nn.logsumexp(masked, axis=0) - diag, 0.0)
    return 0.5 * (row.sum() + col.sum()) / jnp.maximum(valid.sum(), 1)


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias, valid=None):
    """Pairwise sigmoid loss, summed over the N x N pairs (of valid rows) and divided by N."""
    n = image_emb.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T + logit_bias
    signs = 2.0 * jnp.eye(n) - 1.0
    pair = valid[:, None] & valid[None, :]
    return -jnp.sum(jnp.where(pair, jax.nn.log_sigmoid(signs * logits), 0.0)) / jnp.maximum(
        valid.sum(), 1)


def similarity_stats(image_emb, text_emb, valid=None):
    n = image_emb.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid
    sim = image_emb @ text_emb.T
    eye = jnp.eye(n, dtype=bool)
    pair = valid[:, None] & valid[None, :]
    m = jnp.maximum(valid.sum(), 1)
    pos = jnp.sum(jnp.where(eye & pair, sim, 0.0)) / m
    neg = jnp.sum(jnp.where(~eye & pair, sim, 0.0)) / jnp.maximum(m * (m - 1), 1)
    labels = jnp.arange(n)
    masked = jnp.where(pair, sim, -jnp.inf)
    rows = valid.astype(jnp.float32)
    return dict(
        pos_sim=pos,
        neg_sim=neg,
        sim_gap=pos - neg,
        i2t_accuracy=jnp.sum((jnp.argmax(masked, axis=1) == labels) * rows) / m,
        t2i_accuracy=jnp.sum((jnp.argmax(masked, axis=0) == labels) * rows) / m,
    )


def tower_input(batch):
    """The first tower's input: batch['audio'] when the batch has one, else batch['image']."""
    return batch['audio'] if 'audio' in batch else batch['image']


COUPLES_EXAMPLES = True  # each pair's loss depends on every other pair of the batch


def model_inputs(batch):
    return (tower_input(batch), batch['text'])


def embed(apply_fn, params, batch, rngs, config, *, train: bool = True) -> dict:
    """{'rows': {'image', 'text': [N, E] unit-norm}, 'shared': {'logit_scale', 'logit_bias'}}:
    what the loss reads, split from it for the step's gradient cache (jaxbig/step.py)."""
    out = apply_fn({'params': params}, *model_inputs(batch), train=train, rngs=rngs)
    shared = {'logit_scale': out['logit_scale']}
    if 'logit_bias' in out:
        shared['logit_bias'] = out['logit_bias']
    return {'rows': {'image': out['image'], 'text': out['text']}, 'shared': shared}


def loss_from_embeddings(emb, batch, config):
    """(loss, metrics) of `embed`'s output for the whole batch (pairs in any order)."""
    kind = config.get('kind', 'clip')
    rows, shared = emb['rows'], emb['shared']
    x, y, t = global_rows(rows['image']), global_rows(rows['text']), shared['logit_scale']
    valid = global_rows(aggregate.example_mask(batch, rows['image'].shape[0])) > 0
    metrics = similarity_stats(x, y, valid)
    if kind == 'clip':
        t = jnp.minimum(t, config.get('max_logit_scale', math.log(100.0)))
        loss = clip_loss(x, y, t, valid)
    elif kind == 'siglip':
        loss = siglip_loss(x, y, t, shared['logit_bias'], valid)
    else:
        raise ValueError(f'loss.kind={kind!r}: expected one of {KINDS}')
    scale = jnp.exp(t)
    # the global batch's pairs (the loss couples them all); under pmap every device holds
    # the same global loss and reports its share of the count
    pairs = valid.sum().astype(jnp.float32) * replica_share()
    metrics = {k: aggregate.of_value(v, pairs) for k, v in dict(metrics, loss=loss).items()}
    metrics.update(logit_scale=aggregate.constant(scale),
                   temperature=aggregate.constant(1.0 / scale))
    if kind == 'siglip':
        metrics['logit_bias'] = aggregate.constant(shared['logit_bias'])
    return aggregate.of_value(loss, pairs), metrics


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics); see the module docstring."""
    emb = embed(apply_fn, params, batch, rngs, config, train=train)
    return loss_from_embeddings(emb, batch, config)
