"""SimCLR model: backbone f (chosen by name) + MLP projection head g.

    images [B, H, W, C] -> f -> h [B, D] (`features`: the representation probes use)
                        -> g -> z [B, proj_dim] (`__call__`: what the contrastive loss sees)

`backbone` is a dict naming a model module and its fields, e.g.
dict(name='resnet', variant='resnet18', width=32) or dict(name='vit', patch_size=2, ...);
the module's `features` method gives h.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from jaxbig import models
from jaxbig.models import mlp


class Model(nn.Module):
    backbone: Any = None  # dict(name=..., **fields)
    proj_hidden_dims: Sequence[int] = (256,)
    proj_dim: int = 64

    def setup(self):
        cfg = dict(self.backbone or {'name': 'resnet'})
        self.encoder = models.get_model(cfg.pop('name'), **cfg)
        self.head = mlp.Model(tuple(self.proj_hidden_dims), self.proj_dim)

    def features(self, images, *, train: bool = False):
        """images [B, H, W, C] -> backbone representation h [B, D]."""
        return self.encoder.features(images, train=train)

    def __call__(self, images, *, train: bool = False):
        """images [B, H, W, C] -> projections z [B, proj_dim] (not normalised)."""
        return self.head(self.features(images, train=train), train=train)
