"""ResNet-18/50-style image encoders and a plain CNN, with GroupNorm (no mutable state).

    images float32 [batch, H, W, C]
    stem      small-image stem: 3x3 conv, stride 1, no max-pool (CIFAR / digits, as in
              SimCLR's CIFAR variant); 'imagenet': 7x7 conv stride 2 + 3x3 max-pool
    stages    resnet18: 4 stages x 2 basic blocks (3x3, 3x3)
              resnet50: 4 stages x (3, 4, 6, 3) bottleneck blocks (1x1, 3x3, 1x1 x4)
              widths width * (1, 2, 4, 8); stride 2 at the start of stages 2-4
              cnn: `cnn_layers` x (3x3 conv -> GroupNorm -> ReLU), stride 2 from the 2nd
              layer on, width doubling each layer (a plain baseline)
    pool      global average over H, W                          -> features [batch, D]
    head      Dense(num_classes) when num_classes > 0           -> logits [batch, classes]

D = 8 * width (resnet18), 32 * width (resnet50), width * 2**(cnn_layers - 1) (cnn).
GroupNorm replaces BatchNorm: the train state holds params only, and per-example
normalisation keeps the contrastive loss free of the batch-statistics shortcut that
SimCLR works around with global BatchNorm. The last norm of each residual branch starts at
zero scale (the block starts as the identity).
"""

import math

import flax.linen as nn
import jax.numpy as jnp

STAGES = {'resnet18': ('basic', (2, 2, 2, 2)), 'resnet50': ('bottleneck', (3, 4, 6, 3))}
CONV_AXES = (None, None, 'conv_in', 'conv_out')


def conv(features, kernel, strides=1, name=None):
    init = nn.with_logical_partitioning(nn.initializers.he_normal(), CONV_AXES)
    return nn.Conv(
        features, (kernel, kernel), strides, padding='SAME', use_bias=False,
        kernel_init=init, name=name,
    )


def group_norm(channels, groups, zero_init=False, name=None):
    scale = nn.initializers.zeros if zero_init else nn.initializers.ones
    return nn.GroupNorm(
        num_groups=math.gcd(groups, channels),
        scale_init=nn.with_logical_partitioning(scale, ('conv_out',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)),
        name=name,
    )


class BasicBlock(nn.Module):
    """x + (3x3 conv -> GN -> ReLU -> 3x3 conv -> GN), ReLU. [B, H, W, C] -> [B, H/s, W/s, F]."""

    features: int
    strides: int
    groups: int

    @nn.compact
    def __call__(self, x):
        y = conv(self.features, 3, self.strides)(x)
        y = nn.relu(group_norm(self.features, self.groups)(y))
        y = conv(self.features, 3)(y)
        y = group_norm(self.features, self.groups, zero_init=True)(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv(self.features, 1, self.strides, name='shortcut')(x)
            x = group_norm(self.features, self.groups, name='shortcut_norm')(x)
        return nn.relu(x + y)


class BottleneckBlock(nn.Module):
    """x + (1x1 -> 3x3 (stride) -> 1x1 to 4 * features), GN after each. -> [B, H/s, W/s, 4F]."""

    features: int
    strides: int
    groups: int

    @nn.compact
    def __call__(self, x):
        out = 4 * self.features
        y = nn.relu(group_norm(self.features, self.groups)(conv(self.features, 1)(x)))
        y = conv(self.features, 3, self.strides)(y)
        y = nn.relu(group_norm(self.features, self.groups)(y))
        y = group_norm(out, self.groups, zero_init=True)(conv(out, 1)(y))
        if x.shape[-1] != out or self.strides != 1:
            x = conv(out, 1, self.strides, name='shortcut')(x)
            x = group_norm(out, self.groups, name='shortcut_norm')(x)
        return nn.relu(x + y)


class Encoder(nn.Module):
    """images [B, H, W, C] -> pooled features [B, D]; fields as in `Model`."""

    variant: str
    width: int
    stem: str
    norm_groups: int
    cnn_layers: int

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32)
        if self.variant == 'cnn':
            for i in range(self.cnn_layers):
                ch = self.width * 2**i
                x = conv(ch, 3, 1 if i == 0 else 2, name=f'conv{i}')(x)
                x = nn.relu(group_norm(ch, self.norm_groups, name=f'norm{i}')(x))
            return x.mean(axis=(1, 2))
        if self.variant not in STAGES:
            raise ValueError(
                f"model variant {self.variant!r}: expected 'cnn' or one of {sorted(STAGES)}"
            )
        kind, depths = STAGES[self.variant]
        if self.stem == 'imagenet':
            x = conv(self.width, 7, 2, name='stem')(x)
            x = nn.relu(group_norm(self.width, self.norm_groups, name='stem_norm')(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
        elif self.stem == 'small':
            x = conv(self.width, 3, 1, name='stem')(x)
            x = nn.relu(group_norm(self.width, self.norm_groups, name='stem_norm')(x))
        else:
            raise ValueError(f"model stem {self.stem!r}: expected 'small' or 'imagenet'")
        block = BasicBlock if kind == 'basic' else BottleneckBlock
        for s, depth in enumerate(depths):
            for b in range(depth):
                strides = 2 if s > 0 and b == 0 else 1
                x = block(self.width * 2**s, strides, self.norm_groups, name=f'stage{s}_block{b}')(x)
        return x.mean(axis=(1, 2))


class Model(nn.Module):
    """Image encoder: images [B, H, W, C] -> features [B, D] (or logits with num_classes).

    variant: 'resnet18' | 'resnet50' | 'cnn'. stem: 'small' | 'imagenet'.
    """

    variant: str = 'resnet18'
    width: int = 64
    stem: str = 'small'
    norm_groups: int = 8
    cnn_layers: int = 3
    num_classes: int = 0

    def setup(self):
        self.encoder = Encoder(
            self.variant, self.width, self.stem, self.norm_groups, self.cnn_layers
        )
        if self.num_classes:
            init = nn.with_logical_partitioning(nn.initializers.zeros, ('embed', 'vocab'))
            bias = nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',))
            self.head = nn.Dense(self.num_classes, kernel_init=init, bias_init=bias)

    def features(self, images, *, train: bool = False):
        """images [B, H, W, C] -> pooled features [B, D]."""
        del train  # no dropout or batch statistics
        return self.encoder(images)

    def __call__(self, images, *, train: bool = False):
        x = self.features(images, train=train)
        return self.head(x) if self.num_classes else x
