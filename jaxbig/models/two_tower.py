"""Two-tower image-text model (CLIP / SigLIP / LiT style).

    images [B, H, W, C] -> image tower (by name) -> [B, Di] -> Dense -> L2 norm -> [B, embed_dim]
    tokens int32 [B, L] -> text tower (by name)  -> [B, Dt] -> Dense -> L2 norm -> [B, embed_dim]
    logit_scale t (scalar, learned; the loss uses exp(t) as the inverse temperature)
    logit_bias  b (scalar, learned; only with use_bias, for SigLIP)

Initial values from the papers: CLIP t = log(1 / 0.07) (temperature 0.07); SigLIP
t' = log 10 and b = -10 (set by experiments/clip.py from the loss).
`image` / `text` are dicts naming a model module and its fields, e.g.
dict(name='vit', patch_size=4, ...), dict(name='text_encoder', vocab_size=..., ...).
The first tower takes whatever its model takes: with image=dict(name='audio', backbone=...)
(`models.audio`: log-mel front end + an image backbone) it embeds waveforms float32
[B, samples] (CLAP, experiments/clap.py); `encode_image` and the output key 'image' keep
their names. dtype / param_dtype ('float32'): the projections' compute and storage dtypes
and the logit scale / bias storage dtype (an imported bfloat16 CLIP keeps its own; the
towers have their own fields); embeddings are float32 (`l2_normalize`).
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxbig import models


def l2_normalize(x, eps=1e-12):
    """x [..., D] / ||x||, computed in float32."""
    x = x.astype(jnp.float32)
    return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps**2)))


def _tower(cfg):
    cfg = dict(cfg)
    return models.get_model(cfg.pop('name'), **cfg)


class Model(nn.Module):
    image: Any = None  # dict(name=..., **fields)
    text: Any = None
    embed_dim: int = 128
    logit_scale_init: float = math.log(1 / 0.07)
    use_bias: bool = False
    logit_bias_init: float = -10.0
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    def setup(self):
        from jaxbig.models.vit import as_dtype

        self.image_tower = _tower(self.image or {'name': 'vit'})
        self.text_tower = _tower(self.text or {'name': 'text_encoder'})
        dtypes = dict(dtype=as_dtype('dtype', self.dtype),
                      param_dtype=as_dtype('param_dtype', self.param_dtype))
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ('mlp', 'embed'))
        self.image_proj = nn.Dense(self.embed_dim, use_bias=False, kernel_init=init, **dtypes)
        self.text_proj = nn.Dense(self.embed_dim, use_bias=False, kernel_init=init, **dtypes)
        const = lambda v: nn.with_logical_partitioning(nn.initializers.constant(v), ())
        p = dtypes['param_dtype']
        self.logit_scale = self.param('logit_scale', const(self.logit_scale_init), (), p)
        if self.use_bias:
            self.logit_bias = self.param('logit_bias', const(self.logit_bias_init), (), p)

    def features(self, images, *, train: bool = False):
        """images -> the image tower's representation [B, Di] (before the projection)."""
        return self.image_tower.features(images, train=train)

    def encode_image(self, images, *, train: bool = False):
        """images [B, H, W, C] -> unit-norm embeddings float32 [B, embed_dim]."""
        return l2_normalize(self.image_proj(self.features(images, train=train)))

    def encode_text(self, tokens, *, train: bool = False):
        """tokens int32 [B, L] -> unit-norm embeddings float32 [B, embed_dim]."""
        return l2_normalize(self.text_proj(self.text_tower.features(tokens, train=train)))

    def __call__(self, images, tokens, *, train: bool = False):
        """-> dict(image [B, E], text [B, E], logit_scale [], logit_bias [] (0 without bias))."""
        return {
            'image': self.encode_image(images, train=train),
            'text': self.encode_text(tokens, train=train),
            'logit_scale': self.logit_scale,
            'logit_bias': self.logit_bias if self.use_bias else jnp.zeros(()),
        }
