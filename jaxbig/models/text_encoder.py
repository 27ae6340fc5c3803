"""Transformer text encoder (the text tower of CLIP / SigLIP).

    tokens    int32 [batch, L]; pad_id marks padding, the first eos_id ends the text
    embed     nn.Embed(vocab -> width) + learned position embedding   [batch, L, width]
    encoder   `vit.Encoder` (pre-LN, nn.scan over depth); attention only to non-pad keys
              (and with causal=True only to keys at or before the query: CLIP's text tower)
    pool      'eos': the hidden state at the first eos (CLIP takes the eot token; no eos:
              the last position); 'argmax': at the highest token id (Hugging Face CLIP's
              rule when its config says eos_token_id=2, the eot being the last id of the
              vocabulary); 'mean': mean over non-pad positions        -> [batch, width]

Switches for published checkpoints (`vit.Encoder`'s; defaults keep jaxbig's encoder):
use_bias (biases on q/k/v/out and the MLP), norm_eps (LayerNorm epsilon, default 1e-6),
mlp_act ('gelu' tanh approximation | 'gelu_exact' | 'quick_gelu'), causal (False).
pad_id = -1 masks nothing (Hugging Face CLIP derives no mask from the ids).
dtype / param_dtype ('float32'): compute and storage dtypes, as `vit.Model`'s.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxbig.models.vit import Encoder, as_dtype

POOLS = ('eos', 'argmax', 'mean')


class Embed(nn.Module):
    vocab_size: int
    max_len: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ('vocab', 'embed'))
        x = nn.Embed(self.vocab_size, self.width, embedding_init=init, dtype=self.dtype,
                     param_dtype=self.param_dtype)(tokens)
        pos_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ('length', 'embed'))
        pos = self.param('pos_embedding', pos_init, (self.max_len, self.width),
                         self.param_dtype).astype(self.dtype)
        if tokens.shape[1] > self.max_len:
            raise ValueError(f'text length {tokens.shape[1]} > model max_len={self.max_len}')
        return nn.with_logical_constraint(x + pos[: tokens.shape[1]], ('batch', 'length', 'embed'))


class Model(nn.Module):
    """tokens int32 [B, L] -> features [B, width]. pool: 'eos' | 'argmax' | 'mean'."""

    vocab_size: int = 258
    max_len: int = 32
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    pool: str = 'eos'
    pad_id: int = 0
    eos_id: int = 1
    dropout: float = 0.0
    scan_layers: bool = True
    use_bias: bool = False
    norm_eps: float = 1e-6
    mlp_act: str = 'gelu'
    causal: bool = False
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    def setup(self):
        if self.pool not in POOLS:
            raise ValueError(f'text model pool {self.pool!r}: expected one of {POOLS}')
        dtypes = dict(dtype=as_dtype('dtype', self.dtype),
                      param_dtype=as_dtype('param_dtype', self.param_dtype))
        self.embed = Embed(self.vocab_size, self.max_len, self.width, **dtypes)
        self.encoder = Encoder(
            self.depth, self.num_heads, self.mlp_dim, self.dropout, self.scan_layers,
            use_bias=self.use_bias, norm_eps=self.norm_eps, mlp_act=self.mlp_act,
            causal=self.causal, **dtypes,
        )

    def features(self, tokens, *, train: bool = False):
        """tokens int32 [B, L] -> pooled features [B, width]."""
        valid = tokens != self.pad_id  # [B, L]
        x = self.encoder(self.embed(tokens), valid, train=train)
        if self.pool == 'mean':
            w = valid.astype(x.dtype)[..., None]
            return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        if self.pool == 'argmax':
            at = jnp.argmax(tokens, axis=1)
        else:
            is_eos = tokens == self.eos_id  # no eos: the last position
            at = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1), tokens.shape[1] - 1)
        return jnp.take_along_axis(x, at[:, None, None], axis=1)[:, 0]

    def __call__(self, tokens, *, train: bool = False):
        return self.features(tokens, train=train)
