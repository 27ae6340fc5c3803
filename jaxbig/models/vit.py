"""Vision Transformer (ViT) and the bidirectional Transformer `Encoder` it shares with
`text_encoder.py`.

    images    float32 [batch, H, W, C]
    patches   p x p conv, stride p (patch embedding)            [batch, N, width], N = HW/p^2
    + learned position embedding; with pool='cls' a class token is prepended [batch, 1+N, width]
    encoder   depth x pre-LayerNorm block (nn.scan over depth):
                x = x + MHSA(LN(x))     bidirectional, optional key padding mask
                x = x + MLP(LN(x))      Dense -> GELU -> Dense
              final LayerNorm
    pool      'cls': the class token; 'mean': mean over patches  -> features [batch, width]
    head      Dense(num_classes) when num_classes > 0

Parameters carry logical axes ('embed', 'heads', 'kv', 'mlp', 'layers').
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbig.models.layers import Linear


class EncoderBlock(nn.Module):
    """Pre-LN Transformer layer; x [B, T, width], mask bool [B, T] (True = attend) or None.
    Returns (x, None) so that it can be the body of nn.scan."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, mask, train: bool):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        drop = nn.Dropout(self.dropout, deterministic=not train)
        h = nn.LayerNorm(name='attn_norm')(x)
        q, k, v = (
            Linear((self.num_heads, head_dim), ('embed', 'heads', 'kv'), name=n)(h)
            for n in ('query', 'key', 'value')
        )
        attn_mask = None if mask is None else mask[:, None, None, :]
        h = jax.nn.dot_product_attention(q, k, v, mask=attn_mask)
        h = Linear((width,), ('heads', 'kv', 'embed'), contract=2, name='out')(h)
        x = nn.with_logical_constraint(x + drop(h), ('batch', 'length', 'embed'))
        h = nn.LayerNorm(name='mlp_norm')(x)
        h = nn.gelu(Linear((self.mlp_dim,), ('embed', 'mlp'), name='mlp_in')(h))
        h = Linear((width,), ('mlp', 'embed'), name='mlp_out')(h)
        x = nn.with_logical_constraint(x + drop(h), ('batch', 'length', 'embed'))
        return x, None


class Encoder(nn.Module):
    """depth x EncoderBlock (scanned) + final LayerNorm: [B, T, width] -> [B, T, width]."""

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    scan_layers: bool = True

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        args = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout)
        if self.scan_layers:
            layers = nn.scan(
                EncoderBlock,
                variable_axes={'params': 0},
                in_axes=(nn.broadcast, nn.broadcast),
                split_rngs={'params': True, 'dropout': True},
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: 'layers'},
            )(**args, name='layers')
            x, _ = layers(x, mask, train)
        else:
            for i in range(self.depth):
                x, _ = EncoderBlock(**args, name=f'layers_{i}')(x, mask, train)
        return nn.LayerNorm(name='final_norm')(x)


class PatchEmbed(nn.Module):
    """images [B, H, W, C] -> tokens [B, N (+1 class token), width] with position embedding."""

    patch_size: int
    width: int
    class_token: bool

    @nn.compact
    def __call__(self, images):
        h, w = images.shape[1:3]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f'image size {h}x{w} is not a multiple of model patch_size={self.patch_size}'
            )
        kernel_init = nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, 'conv_in', 'embed')
        )
        p = (self.patch_size, self.patch_size)
        x = nn.Conv(self.width, p, strides=p, padding='VALID', kernel_init=kernel_init)(
            images.astype(jnp.float32)
        )
        x = x.reshape(x.shape[0], -1, self.width)  # [B, N, width]
        pos_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ('length', 'embed'))
        x = x + self.param('pos_embedding', pos_init, x.shape[1:])
        if self.class_token:
            cls_init = nn.with_logical_partitioning(nn.initializers.zeros, (None, None, 'embed'))
            cls = self.param('cls', cls_init, (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], 1)
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Model(nn.Module):
    """ViT: images [B, H, W, C] -> features [B, width] (or logits with num_classes).

    pool: 'cls' | 'mean'. H and W must be multiples of patch_size.
    """

    patch_size: int = 4
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 256
    pool: str = 'cls'
    dropout: float = 0.0
    scan_layers: bool = True
    num_classes: int = 0

    def setup(self):
        if self.pool not in ('cls', 'mean'):
            raise ValueError(f"model pool {self.pool!r}: expected 'cls' or 'mean'")
        self.embed = PatchEmbed(self.patch_size, self.width, self.pool == 'cls')
        self.encoder = Encoder(
            self.depth, self.num_heads, self.mlp_dim, self.dropout, self.scan_layers
        )
        if self.num_classes:
            init = nn.with_logical_partitioning(nn.initializers.zeros, ('embed', 'vocab'))
            self.head = nn.Dense(self.num_classes, kernel_init=init)

    def features(self, images, *, train: bool = False):
        """images [B, H, W, C] -> pooled features [B, width]."""
        x = self.encoder(self.embed(images), train=train)
        return x[:, 0] if self.pool == 'cls' else x.mean(axis=1)

    def __call__(self, images, *, train: bool = False):
        x = self.features(images, train=train)
        return self.head(x) if self.num_classes else x
