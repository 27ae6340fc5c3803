"""Image-text contrastive losses: CLIP (softmax) and SigLIP (sigmoid), chosen by `kind`.

batch: image float32 [N, H, W, C], text int32 [N, L]; pair i is (image i, text i). Audio-text
batches (`data.audio_text`) carry audio float32 [N, samples] instead of image: it feeds the
first tower the same way (`tower_input`), and "image" below means that tower's embedding.
The model (`models.two_tower`) returns unit-norm embeddings x (images), y (texts)
[N, E], a learned logit scale t and bias b. With logits = exp(t) * x y^T (+ b):

  clip    (Radford et al. 2021) symmetric softmax cross-entropy:
          loss = ( CE_rows(logits, diag) + CE_cols(logits, diag) ) / 2,  t <= max_logit_scale
  siglip  (Zhai et al. 2023) pairwise sigmoid: z_ij = +1 if i == j else -1,
          loss = -(1 / N) sum_ij log sigmoid(z_ij * (exp(t) x_i.y_j + b))

N is the global batch (under jit over a sharded batch the negatives come from every device
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

from jaxbig.pmap import global_rows

KINDS = ('clip', 'siglip')


def clip_loss(image_emb, text_emb, logit_scale):
    """image_emb, text_emb [N, E] unit-norm; logit_scale t (scalar, log inverse temperature)."""
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T  # [N, N]
    labels = jnp.arange(logits.shape[0])
    row = jax.nn.logsumexp(logits, axis=1) - logits[labels, labels]
    col = jax.nn.logsumexp(logits, axis=0) - logits[labels, labels]
    return 0.5 * (row.mean() + col.mean())


def siglip_loss(image_emb, text_emb, logit_scale, logit_bias):
    """Pairwise sigmoid loss, summed over the N x N pairs and divided by N."""
    logits = jnp.exp(logit_scale) * image_emb @ text_emb.T + logit_bias
    signs = 2.0 * jnp.eye(logits.shape[0]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


def similarity_stats(image_emb, text_emb):
    sim = image_emb @ text_emb.T
    n = sim.shape[0]
    eye = jnp.eye(n, dtype=bool)
    pos = jnp.trace(sim) / n
    neg = jnp.sum(jnp.where(eye, 0.0, sim)) / max(n * (n - 1), 1)
    labels = jnp.arange(n)
    return dict(
        pos_sim=pos,
        neg_sim=neg,
        sim_gap=pos - neg,
        i2t_accuracy=jnp.mean(jnp.argmax(sim, axis=1) == labels),
        t2i_accuracy=jnp.mean(jnp.argmax(sim, axis=0) == labels),
    )


def tower_input(batch):
    """The first tower's input: batch['audio'] when the batch has one, else batch['image']."""
    return batch['audio'] if 'audio' in batch else batch['image']


def model_inputs(batch):
    return (tower_input(batch), batch['text'])


def loss_fn(apply_fn, params, batch, rngs, config, *, train: bool = True):
    """Returns (loss, metrics); see the module docstring."""
    kind = config.get('kind', 'clip')
    out = apply_fn({'params': params}, *model_inputs(batch), train=train, rngs=rngs)
    x, y, t = global_rows(out['image']), global_rows(out['text']), out['logit_scale']
    metrics = similarity_stats(x, y)
    if kind == 'clip':
        t = jnp.minimum(t, config.get('max_logit_scale', math.log(100.0)))
        loss = clip_loss(x, y, t)
    elif kind == 'siglip':
        loss = siglip_loss(x, y, t, out['logit_bias'])
        metrics['logit_bias'] = out['logit_bias']
    else:
        raise ValueError(f'loss.kind={kind!r}: expected one of {KINDS}')
    scale = jnp.exp(t)
    return loss, dict(metrics, loss=loss, logit_scale=scale, temperature=1.0 / scale)
