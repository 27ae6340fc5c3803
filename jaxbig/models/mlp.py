"""MLP (projection head): [..., in] -> [..., out_dim].

Dense -> ReLU for each hidden width, then a final Dense (no activation), SimCLR's
projection head g(.) (Chen et al. 2020: one hidden layer, ReLU). `layer_norm` adds a
LayerNorm before each ReLU (a stateless stand-in for the head's BatchNorm in SimCLR v2).
"""

from collections.abc import Sequence

import flax.linen as nn


def dense(features, name=None):
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ('embed', 'mlp'))
    bias = nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',))
    return nn.Dense(features, kernel_init=init, bias_init=bias, name=name)


class Model(nn.Module):
    hidden_dims: Sequence[int] = (256,)
    out_dim: int = 128
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train
        for i, width in enumerate(self.hidden_dims):
            x = dense(width, name=f'hidden{i}')(x)
            if self.layer_norm:
                x = nn.LayerNorm(name=f'norm{i}')(x)
            x = nn.relu(x)
        return dense(self.out_dim, name='out')(x)
