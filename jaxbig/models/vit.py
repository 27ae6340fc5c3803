"""Vision Transformer (ViT) and the bidirectional Transformer `Encoder` it shares with
`text_encoder.py`.

    images    float32 [batch, H, W, C]
    patches   p x p conv, stride p (patch embedding)            [batch, N, width], N = HW/p^2
    + learned position embedding; with pool='cls' a class token is prepended [batch, 1+N, width]
    encoder   depth x pre-LayerNorm block (nn.scan over depth):
                x = x + MHSA(LN(x))     bidirectional (or causal), optional key padding mask
                x = x + MLP(LN(x))      Dense -> GELU -> Dense
              final LayerNorm
    pool      'cls': the class token; 'mean': mean over patches  -> features [batch, width]
    head      Dense(num_classes) when num_classes > 0

Switches for published checkpoints (jaxbig.interop imports Hugging Face ViT and CLIP); the
defaults are jaxbig's own ViT, whose parameters and outputs they leave unchanged:

    use_bias     False   biases on q/k/v/out and both MLP projections (HF: True)
    norm_eps     1e-6    every LayerNorm's epsilon (HF ViT 1e-12, CLIP 1e-5)
    mlp_act      'gelu'  the MLP activation: 'gelu' (tanh approximation), 'gelu_exact'
                         (erf; HF 'gelu'), 'quick_gelu' (x * sigmoid(1.702 x); CLIP)
    positions    'patches'  the position embedding [N] is added to the patches, then the
                         class token is prepended; 'all': class token first, then a
                         [1 + N] embedding over every token (HF ViT and CLIP)
    patch_bias   True    a bias on the patch convolution (CLIP: False)
    pre_norm     False   a LayerNorm on the embedded tokens before the encoder (CLIP's
                         pre_layrnorm; params `embed_norm`)
    final_norm   'tokens'  the final LayerNorm over every token (`encoder/final_norm`);
                         'pooled': on the pooled features only (CLIP's post_layernorm;
                         params `pool_norm`)
    pooler_dim   0       > 0: features = tanh(Dense(pooler_dim)(pooled)) (HF ViTModel's
                         pooler; params `pooler`)
    image_size   0       > 0: images must be image_size x image_size (as HF checks); 0 = any
                         multiple of patch_size (the position table is sized by the init)
    dtype        'float32'  compute dtype of the convolution, matmuls and norms' outputs
                         (norm statistics and the attention softmax stay float32)
    param_dtype  'float32'  storage dtype of every parameter (an imported bfloat16 / float16
                         checkpoint keeps its own; jaxbig.interop.vision)

Parameters carry logical axes ('embed', 'heads', 'kv', 'mlp', 'layers').
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbig.models.layers import Linear

MLP_ACTS = ('gelu', 'gelu_exact', 'quick_gelu')


def activation(x, kind: str):
    """The MLP nonlinearity `kind` (one of MLP_ACTS)."""
    if kind == 'gelu':
        return nn.gelu(x)  # tanh approximation
    if kind == 'gelu_exact':
        return nn.gelu(x, approximate=False)
    if kind == 'quick_gelu':
        return x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f'mlp_act {kind!r}: expected one of {MLP_ACTS}')


def as_dtype(field: str, name):
    """A model dtype field ('float32', 'bfloat16', ...) -> jnp dtype; one-line error."""
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ValueError(f"model {field}={name!r} is not a dtype; use e.g. 'float32' or "
                         "'bfloat16'") from None


class EncoderBlock(nn.Module):
    """Pre-LN Transformer layer; x [B, T, width], mask bool [B, T] (True = attend) or None.
    Returns (x, None) so that it can be the body of nn.scan."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    use_bias: bool = False
    norm_eps: float = 1e-6
    mlp_act: str = 'gelu'
    causal: bool = False  # position i attends to keys <= i (CLIP's text tower)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, train: bool):
        width = x.shape[-1]
        head_dim = width // self.num_heads
        drop = nn.Dropout(self.dropout, deterministic=not train)
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bias = dict(use_bias=self.use_bias, **dtypes)
        h = nn.LayerNorm(epsilon=self.norm_eps, name='attn_norm', **dtypes)(x)
        q, k, v = (
            Linear((self.num_heads, head_dim), ('embed', 'heads', 'kv'), name=n, **bias)(h)
            for n in ('query', 'key', 'value')
        )
        attn_mask = None if mask is None else mask[:, None, None, :]
        h = jax.nn.dot_product_attention(q, k, v, mask=attn_mask, is_causal=self.causal)
        h = Linear((width,), ('heads', 'kv', 'embed'), contract=2, name='out', **bias)(h)
        x = nn.with_logical_constraint(x + drop(h), ('batch', 'length', 'embed'))
        h = nn.LayerNorm(epsilon=self.norm_eps, name='mlp_norm', **dtypes)(x)
        h = Linear((self.mlp_dim,), ('embed', 'mlp'), name='mlp_in', **bias)(h)
        h = Linear((width,), ('mlp', 'embed'), name='mlp_out', **bias)(activation(h, self.mlp_act))
        x = nn.with_logical_constraint(x + drop(h), ('batch', 'length', 'embed'))
        return x, None


class Encoder(nn.Module):
    """depth x EncoderBlock (scanned) + final LayerNorm: [B, T, width] -> [B, T, width].
    final_norm=False leaves the last block's output un-normalised (CLIP's image tower)."""

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    scan_layers: bool = True
    use_bias: bool = False
    norm_eps: float = 1e-6
    mlp_act: str = 'gelu'
    causal: bool = False
    final_norm: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        args = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                    use_bias=self.use_bias, norm_eps=self.norm_eps, mlp_act=self.mlp_act,
                    causal=self.causal, **dtypes)
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
        if not self.final_norm:
            return x
        return nn.LayerNorm(epsilon=self.norm_eps, name='final_norm', **dtypes)(x)


class PatchEmbed(nn.Module):
    """images [B, H, W, C] -> tokens [B, N (+1 class token), width] with position embedding.
    positions: 'patches' (embedding over the N patches, then the class token) | 'all'
    (the class token first, then an embedding over all 1 + N tokens)."""

    patch_size: int
    width: int
    class_token: bool
    positions: str = 'patches'
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

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
        x = nn.Conv(self.width, p, strides=p, padding='VALID', kernel_init=kernel_init,
                    use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype)(images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, self.width)  # [B, N, width]
        pos_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ('length', 'embed'))

        def param(name, init, shape):
            return self.param(name, init, shape, self.param_dtype).astype(self.dtype)

        if self.positions == 'patches':
            x = x + param('pos_embedding', pos_init, x.shape[1:])
        if self.class_token:
            cls_init = nn.with_logical_partitioning(nn.initializers.zeros, (None, None, 'embed'))
            cls = param('cls', cls_init, (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], 1)
        if self.positions == 'all':
            x = x + param('pos_embedding', pos_init, x.shape[1:])
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Model(nn.Module):
    """ViT: images [B, H, W, C] -> features [B, width] (or logits with num_classes).

    pool: 'cls' | 'mean'. H and W must be multiples of patch_size. The switches after
    num_classes are described in the module docstring.
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
    use_bias: bool = False
    norm_eps: float = 1e-6
    mlp_act: str = 'gelu'
    positions: str = 'patches'
    patch_bias: bool = True
    pre_norm: bool = False
    final_norm: str = 'tokens'
    pooler_dim: int = 0
    image_size: int = 0
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    def setup(self):
        for field, value, allowed in (('pool', self.pool, ('cls', 'mean')),
                                      ('mlp_act', self.mlp_act, MLP_ACTS),
                                      ('positions', self.positions, ('patches', 'all')),
                                      ('final_norm', self.final_norm, ('tokens', 'pooled'))):
            if value not in allowed:
                raise ValueError(f'model {field} {value!r}: expected one of {allowed}')
        dtypes = dict(dtype=as_dtype('dtype', self.dtype),
                      param_dtype=as_dtype('param_dtype', self.param_dtype))
        self.embed = PatchEmbed(self.patch_size, self.width, self.pool == 'cls',
                                self.positions, self.patch_bias, **dtypes)
        if self.pre_norm:
            self.embed_norm = nn.LayerNorm(epsilon=self.norm_eps, **dtypes)
        self.encoder = Encoder(
            self.depth, self.num_heads, self.mlp_dim, self.dropout, self.scan_layers,
            use_bias=self.use_bias, norm_eps=self.norm_eps, mlp_act=self.mlp_act,
            final_norm=self.final_norm == 'tokens', **dtypes,
        )
        if self.final_norm == 'pooled':
            self.pool_norm = nn.LayerNorm(epsilon=self.norm_eps, **dtypes)
        if self.pooler_dim:
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ('embed', 'mlp'))
            self.pooler = nn.Dense(self.pooler_dim, kernel_init=init, **dtypes)
        if self.num_classes:
            init = nn.with_logical_partitioning(nn.initializers.zeros, ('embed', 'vocab'))
            self.head = nn.Dense(self.num_classes, kernel_init=init, **dtypes)

    def tokens(self, images, *, train: bool = False):
        """images [B, H, W, C] -> the encoder's output tokens [B, (1 +) N, width] (HF's
        last_hidden_state: after the final norm with final_norm='tokens', before it with
        'pooled')."""
        if self.image_size and images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f'image size {images.shape[1]}x{images.shape[2]} does not match '
                             f'model image_size={self.image_size}')
        x = self.embed(images)
        if self.pre_norm:
            x = self.embed_norm(x)
        return self.encoder(x, train=train)

    def features(self, images, *, train: bool = False):
        """images [B, H, W, C] -> pooled features [B, width] (or [B, pooler_dim])."""
        x = self.tokens(images, train=train)
        x = x[:, 0] if self.pool == 'cls' else x.mean(axis=1)
        if self.final_norm == 'pooled':
            x = self.pool_norm(x)
        return jnp.tanh(self.pooler(x)) if self.pooler_dim else x

    def __call__(self, images, *, train: bool = False):
        x = self.features(images, train=train)
        return self.head(x) if self.num_classes else x
