"""Attention as functions of q, k, v (the GPT's and ViT's Attention modules call these).

Shapes: b batch, t queries, S keys (= t, or a KV cache's slots), h heads, d head_dim.

    masked_attention  softmax attention q [b, t, h, d], k, v [b, S, h_kv, d] with a boolean
                      `visible` broadcastable to [b, h, t, S] -> [b, t, h, d]
    causal_attention  causal self-attention q, k, v [b, t, h, d] -> [b, t, h, d], computed
                      in `attention_blocks(t)` query blocks (masked-out blocks skipped);
                      with segment_ids [b, t] a query sees only keys of its own segment
                      (packed examples); with a window only the last `window` positions
    attention_blocks  the default number of query blocks for a sequence length
    segment_mask      bool [b, 1, t, S]: which keys are of each query's segment
    cached_attention  attention of new queries [b, t, h, d] over a KV cache k, v [b, S, h, d],
                      masked by token positions q_pos [b, t] and slot positions k_pos [b, S]

Logits are q.k times `scale` (default 1/sqrt(d)), then, with `softcap` > 0, softcap *
tanh(logits / softcap) (Gemma 2), in float32 whatever the input dtype, as is the softmax.
A sliding `window` is an int (0 = none; a static window lets causal_attention skip the keys
no query of a block sees) or a traced int scalar (a window chosen per layer inside a scan).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _logits(scores, scale, softcap):
    scores = scores * scale
    return softcap * jnp.tanh(scores / softcap) if softcap else scores


def masked_attention(q, k, v, visible, scale: float | None = None, softcap: float = 0.0):
    """Softmax attention where query i sees key j iff visible[..., i, j].

    q: [batch, t, heads, head_dim]; k, v: [batch, S, kv_heads, head_dim], kv_heads dividing
    heads (grouped-query attention: query head i reads kv head i // (heads / kv_heads));
    visible: bool, broadcastable to [batch, heads, t, S] (to [batch, 1, t, S] with groups).
    Logits (see the module docstring: scale, softcap) and softmax in float32; returns
    [batch, t, heads, head_dim] in v.dtype. A query that sees nothing gets a uniform
    average (never used: such queries are padding).
    """
    heads, kv_heads = q.shape[2], k.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if kv_heads != heads:  # [b, t, kv, group, d] against [b, S, kv, d]
        b, t, _, d = q.shape
        q = q.reshape(b, t, kv_heads, heads // kv_heads, d)
        visible = jnp.asarray(visible)[..., None, :, :]  # the same mask for every head
        scores = jnp.einsum('bqhgd,bkhd->bhgqk', q, k, preferred_element_type=jnp.float32)
        scores = jnp.where(visible, _logits(scores, scale, softcap), -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        return jnp.einsum('bhgqk,bkhd->bqhgd', probs, v).reshape(b, t, heads, d)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(visible, _logits(scores, scale, softcap), -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


def attention_blocks(seq: int) -> int:
    """How many query blocks causal_attention splits a sequence into: blocks of
    max(64, seq // 4) queries when that divides seq, else 1 (no split)."""
    size = max(64, seq // 4)
    return seq // size if seq % size == 0 else 1


def causal_attention(q, k, v, num_blocks: int | None = None, segment_ids=None, window=0,
                     scale: float | None = None, softcap: float = 0.0):
    """Causal softmax attention; q, k, v [batch, seq, heads, head_dim] -> same shape.

    segment_ids: None, or int [batch, seq]: position i then attends to positions j <= i
    with segment_ids[j] == segment_ids[i] only (examples packed into one row do not see
    each other). window: 0, or a sliding window: position i sees j only if i - j < window
    (itself and the window - 1 before it; Mistral / Gemma 2); static or traced (see the
    module docstring).

    Logits (scale, softcap: the module docstring) and softmax are float32 whatever the
    input dtype; position i attends to positions <= i. The queries are split into
    `num_blocks` equal blocks (default `attention_blocks(seq)`); block i only computes
    logits against keys 0 .. end of block i (from the block's first query's window start
    when there is a window), so the fully masked blocks cost nothing (at 4 blocks, 5/8 of
    the logits of one [seq, seq] product). Each block is exact: two einsums and a masked
    softmax over all the keys it can see.
    """
    seq = q.shape[1]
    num_blocks = num_blocks or attention_blocks(seq)
    if seq % num_blocks:
        raise ValueError(f'causal_attention: seq={seq} is not divisible by num_blocks={num_blocks}')
    size = seq // num_blocks
    outs = []
    for i in range(num_blocks):
        lo, hi = i * size, (i + 1) * size
        static = isinstance(window, int)
        first = max(0, lo - window + 1) if static and window else 0  # the earliest key seen
        keys, queries = np.arange(first, hi)[None, :], np.arange(lo, hi)[:, None]
        visible = keys <= queries  # [size, hi - first], static unless the window is traced
        if not static or window:
            visible = visible & (queries - keys < window)
        if segment_ids is not None:  # [b, 1, size, hi - first]
            visible = visible & segment_mask(segment_ids[:, lo:hi], segment_ids[:, first:hi])
        outs.append(masked_attention(q[:, lo:hi], k[:, first:hi], v[:, first:hi], visible,
                                     scale, softcap))
    return outs[0] if num_blocks == 1 else jnp.concatenate(outs, axis=1)


def segment_mask(q_segments, k_segments):
    """bool [batch, 1, t, S]: query i may see key j iff they are of the same segment
    (q_segments int [batch, t], k_segments int [batch, S])."""
    return (q_segments[:, :, None] == k_segments[:, None, :])[:, None]


def cached_attention(q, k, v, q_pos, k_pos, window=0, scale: float | None = None,
                     softcap: float = 0.0):
    """Attention of new queries over a KV cache, masked by positions.

    q: [batch, t, heads, head_dim]; k, v: [batch, S, heads, head_dim] (the whole cache,
    new entries already written); q_pos int [batch, t]; k_pos int [batch, S], -1 = an empty
    or padding slot. Query i sees slot j iff 0 <= k_pos[j] <= q_pos[i] (and, with a sliding
    `window`, q_pos[i] - k_pos[j] < window: the cache keeps every slot, the mask limits
    what is read, so the result is the full forward's). Logits (scale, softcap) and softmax
    in float32; returns [batch, t, heads, head_dim] in q.dtype.
    A query that sees nothing (a padding query) gets a uniform average; it is never used.
    """
    mask = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= q_pos[:, :, None])  # [b, t, S]
    if not isinstance(window, int) or window:
        mask = mask & (q_pos[:, :, None] - k_pos[:, None, :] < window)
    return masked_attention(q, k, v, mask[:, None], scale, softcap)
