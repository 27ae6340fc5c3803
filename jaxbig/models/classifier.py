"""A classification (or regression) head on any backbone of `jaxbig.models`.

    Model(backbone={'name': 'gpt', ...gpt fields}, num_classes=9, pooling='last')

The backbone's `features(x, train=)` gives either per-position features [B, T, E] (GPT,
text encoders: pooled here with the mask, 'last' = last real token, 'mean' = masked mean)
or pooled features [B, E] (image encoders, BERT: used as is). A backbone whose `features`
takes a `mask` (BERT: `features(x, mask, train=)`, attention to the real tokens only, its
own `pool`) is given the batch's mask. The head is a Dense [E, K].
Parameters: `encoder/...` (the backbone's own tree) and `head/{kernel,bias}`, so a
pretrained backbone loads with init_from rename `('^', 'backbone/')`.
"""

from __future__ import annotations

import inspect
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxbig.config import ConfigError

POOLINGS = ('last', 'mean')


def pool(features, mask, pooling: str):
    """[B, T, E] features, [B, T] mask -> [B, E]."""
    if mask is None:
        mask = jnp.ones(features.shape[:2], features.dtype)
    mask = mask.astype(features.dtype)
    if pooling == 'mean':
        return (features * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
    if pooling == 'last':
        last = jnp.maximum(mask.sum(1).astype(jnp.int32) - 1, 0)
        return jnp.take_along_axis(features, last[:, None, None], axis=1)[:, 0]
    raise ConfigError(f'model.pooling={pooling!r}: expected one of {POOLINGS}')


class Model(nn.Module):
    backbone: Any  # dict: {'name': ..., **backbone fields}
    num_classes: int = 2
    pooling: str = 'last'

    def setup(self):
        from jaxbig import models

        kwargs = dict(self.backbone)
        self.encoder = models.get_model(kwargs.pop('name'), **kwargs)
        self.head = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            param_dtype=jnp.float32,
            name='head',
        )

    def features(self, inputs, mask=None, *, train: bool = False):
        takes_mask = 'mask' in inspect.signature(type(self.encoder).features).parameters
        if mask is not None and takes_mask:  # BERT: attends to the real tokens only
            x = self.encoder.features(inputs, mask, train=train)
        else:
            x = self.encoder.features(inputs, train=train)
        return pool(x, mask, self.pooling) if x.ndim == 3 else x

    def __call__(self, inputs, mask=None, *, train: bool = False):
        return self.head(self.features(inputs, mask, train=train).astype(jnp.float32))
