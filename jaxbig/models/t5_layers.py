"""T5's layer pieces (jaxbig.models.t5 assembles them): relative position buckets and
their bias table, attention without 1/sqrt(d) scaling, the [gated-]ACT feed-forward, and the
encoder / decoder blocks with their decoding step. Shapes and init: jaxbig/models/t5.py.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbig.models.layers import Linear, RMSNorm

ACTS = {'relu': nn.relu, 'gelu': functools.partial(nn.gelu, approximate=False),
        'gelu_new': functools.partial(nn.gelu, approximate=True), 'silu': nn.silu}


def feed_forward_kind(proj: str) -> tuple[bool, str]:
    """T5's feed_forward_proj -> (gated, activation name in ACTS); HF's 'gated-gelu' is the
    tanh gelu ('gelu_new'). ValueError for another form or activation."""
    parts = proj.split('-')
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != 'gated') or parts[-1] not in ACTS:
        raise ValueError(f"model.feed_forward={proj!r}: expected '[gated-]ACT' with ACT in "
                         f'{sorted(ACTS)}')
    gated = len(parts) == 2
    return gated, 'gelu_new' if proj == 'gated-gelu' else parts[-1]


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int,
                             max_distance: int):
    """T5's bucket of each relative position (key position - query position), int32 [...]
    -> int32 [...] in [0, num_buckets). Bidirectional: half the buckets for keys after the
    query; causal: positive positions (the future) share bucket 0. Of each half, distances
    below half of it get one bucket each, longer ones logarithmic buckets up to
    max_distance (and beyond it the last bucket). float32 as in Mesh TensorFlow and HF."""
    rel = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(rel)
    else:
        distance = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


def _normal(std, axes):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class RelativeBias(nn.Module):
    """q_pos int [t], k_pos int [S] -> the bias float32 [1, heads, t, S] (table [buckets,
    heads], 'embedding', as HF's relative_attention_bias)."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool
    init_std: float

    @nn.compact
    def __call__(self, q_pos, k_pos):
        table = self.param('embedding', _normal(self.init_std, (None, 'heads')),
                           (self.num_buckets, self.num_heads), jnp.float32)
        buckets = relative_position_bucket(
            k_pos[None, :] - q_pos[:, None], bidirectional=self.bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance)
        return jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))[None]


class Attention(nn.Module):
    """T5 attention: queries from x [b, t, E], keys / values [b, S, heads, head_dim] from a
    source (x itself, or the encoder output) -> [b, t, E]; logits not scaled."""

    num_heads: int
    head_dim: int
    embed_dim: int
    dtype: Any
    param_dtype: Any

    def setup(self):
        d = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shape, axes, e = (self.num_heads, self.head_dim), ('embed', 'heads', 'kv'), self.embed_dim
        self.query = Linear(shape, axes, init_std=(e * self.head_dim) ** -0.5, **d)
        self.key = Linear(shape, axes, init_std=e ** -0.5, **d)
        self.value = Linear(shape, axes, init_std=e ** -0.5, **d)
        self.out = Linear((e,), ('heads', 'kv', 'embed'), contract=2,
                          init_std=(self.num_heads * self.head_dim) ** -0.5, **d)

    def project_kv(self, source):
        """source [b, S, E] -> (k, v) [b, S, heads, head_dim]."""
        return self.key(source), self.value(source)

    def __call__(self, x, k, v, bias, visible):
        """x [b, t, E]; k, v [b, S, h, d]; bias float32 [1, h, t, S] or None; visible bool
        broadcastable to [b, h, t, S] -> [b, t, E]. Logits and softmax in float32."""
        q = self.query(x)
        scores = jnp.einsum('bqhd,bkhd->bhqk', q, k.astype(q.dtype),
                            preferred_element_type=jnp.float32)
        if bias is not None:
            scores = scores + bias
        probs = jax.nn.softmax(jnp.where(visible, scores, -1e30), axis=-1)
        out = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)
        return self.out(out)


class FeedForward(nn.Module):
    """[b, t, E] -> [b, t, E]: wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) when gated."""

    mlp_dim: int
    embed_dim: int
    feed_forward: str
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        gated, act = feed_forward_kind(self.feed_forward)
        d = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        up = functools.partial(Linear, (self.mlp_dim,), ('embed', 'mlp'),
                               init_std=self.embed_dim ** -0.5, **d)
        if gated:
            h = ACTS[act](up(name='wi_0')(x)) * up(name='wi_1')(x)
        else:
            h = ACTS[act](up(name='wi')(x))
        h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
        return Linear((self.embed_dim,), ('mlp', 'embed'), init_std=self.mlp_dim ** -0.5,
                      name='wo', **d)(h)


class EncoderBlock(nn.Module):
    """x + Attn(norm(x)), then x + FFN(norm(x)); x [b, S, E]. Returns (x, None) (nn.scan)."""

    num_heads: int
    head_dim: int
    embed_dim: int
    mlp_dim: int
    feed_forward: str
    dropout: float
    norm_eps: float
    dtype: Any
    param_dtype: Any

    def setup(self):
        d = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.attn_norm = RMSNorm(self.norm_eps, **d)
        self.attn = Attention(self.num_heads, self.head_dim, self.embed_dim, **d)
        self.mlp_norm = RMSNorm(self.norm_eps, **d)
        self.mlp = FeedForward(self.mlp_dim, self.embed_dim, self.feed_forward, **d)
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, x, bias, visible, train: bool):
        h = self.attn_norm(x)
        h = self.attn(h, *self.attn.project_kv(h), bias, visible)
        x = _constrain(x + self.drop(h, deterministic=not train))
        h = self.mlp(self.mlp_norm(x))
        return _constrain(x + self.drop(h, deterministic=not train)), None


class DecoderBlock(EncoderBlock):
    """x + causal self-Attn(norm(x)), x + cross-Attn(norm(x), encoder output), x + FFN.
    `__call__` (training: (x, None) for nn.scan), `cross_kv` and `decode` (a KV cache)."""

    def setup(self):
        super().setup()
        d = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.cross_norm = RMSNorm(self.norm_eps, **d)
        self.cross_attn = Attention(self.num_heads, self.head_dim, self.embed_dim, **d)

    def _rest(self, x, cross_kv, cross_visible, train):
        """The cross-attention and FFN sublayers, after the self-attention residual."""
        h = self.cross_attn(self.cross_norm(x), *cross_kv, None, cross_visible)
        x = _constrain(x + self.drop(h, deterministic=not train))
        h = self.mlp(self.mlp_norm(x))
        return _constrain(x + self.drop(h, deterministic=not train))

    def __call__(self, x, enc, bias, visible, cross_visible, train: bool):
        h = self.attn_norm(x)
        h = self.attn(h, *self.attn.project_kv(h), bias, visible)
        x = _constrain(x + self.drop(h, deterministic=not train))
        return self._rest(x, self.cross_kv(enc), cross_visible, train), None

    def cross_kv(self, enc):
        """enc [b, S, E] -> this layer's cross-attention (k, v) [b, S, heads, head_dim]."""
        return self.cross_attn.project_kv(enc)

    def decode(self, x, bias, visible, cross_visible, kv, cross_kv, index):
        """x [b, t, E] new tokens; kv = (k, v) [b, L, h, d] the self-attention cache, the t
        new entries written at slot `index`; cross_kv from `cross_kv`. -> (x, kv)."""
        h = self.attn_norm(x)
        k_new, v_new = self.attn.project_kv(h)
        write = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
            cache, new.astype(cache.dtype), index, 1)
        kv = (write(kv[0], k_new), write(kv[1], v_new))
        x = _constrain(x + self.attn(h, *kv, bias, visible))
        return self._rest(x, cross_kv, cross_visible, False), kv


def _constrain(x):
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
