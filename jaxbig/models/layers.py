"""Reusable Transformer layer pieces (GPT, ViT): dense projection, norm, RoPE, attention.

Shapes: b batch, t queries, S keys (= t, or a KV cache's slots), h heads, d head_dim.

    Linear            flax module: y = x . kernel, contracting the last `contract` dims of x,
                      [..., *in] -> [..., *features]; kernel in + features, logical axes
                      `kernel_axes`; computed as one 2-D matmul in `dtype`
    RMSNorm           flax module: x / sqrt(mean(x**2) + eps) * scale, [..., embed] -> same
                      (or over [..., heads, head_dim]); statistics in float32, output in
                      `dtype`; scale [embed] ('embed'); offset 1: * (1 + scale) (Gemma)
    apply_rope        rotary position embedding (jaxbig.models.rope: the scaling kinds),
                      x [b, t, h, d] with positions [t] or [b, t] -> [b, t, h, d]
    masked_attention, causal_attention, cached_attention, segment_mask, attention_blocks:
                      attention as functions of q, k, v (jaxbig.models.attention)
    LayerNorm, NORMS  LayerNorm with bias (GPT-2); {'rmsnorm', 'layernorm',
                      'rmsnorm_plus_one'} -> module
    Attention         causal self-attention [b, t, embed] -> same: q/k/v/out projections,
                      RoPE (any scaling) or none, grouped-query (num_kv_heads), optional
                      biases, per-head q/k RMSNorm, a sliding window, KV-cache decoding
    Mlp               'swiglu' (Llama), 'geglu' (Gemma) or 'gelu' / 'gelu_exact' (GPT-2)
                      MLP, optional biases

Attention logits are scaled by 1/sqrt(d) (or the `scale` given: Gemma's query_pre_attn_scalar),
soft-capped when asked, and the logits and softmax are float32 whatever the input dtype.
Parameters live in `param_dtype`; matmuls run in `dtype`.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbig.models import splash
from jaxbig.models.attention import (  # noqa: F401 (re-exported: layers.causal_attention ...)
    attention_blocks,
    cached_attention,
    causal_attention,
    masked_attention,
    segment_mask,
)
from jaxbig.models.rope import RopeScaling, apply_rope, frequencies, rotate  # noqa: F401

# ------------------------------------------------------------------- Projection and norm


class Linear(nn.Module):
    """y = x . kernel, contracting the last `contract` dims of x: [..., *in] -> [..., *features].

    Computed as one 2-D matmul [prod(...), prod(in)] @ [prod(in), prod(features)].

    The kernel has shape in + features and logical axes `kernel_axes`. (flax's DenseGeneral
    initialises a flattened 2-D kernel and reshapes it, which breaks a 3-name logical
    partitioning as soon as a mesh and rules are active; this keeps the kernel whole.)
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    contract: int = 1
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    use_bias: bool = False  # + bias [*features] (zeros at init; axes kernel_axes[contract:])

    @nn.compact
    def __call__(self, x):
        kernel_shape = x.shape[x.ndim - self.contract :] + tuple(self.features)
        init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.kernel_axes)
        kernel = self.param('kernel', init, kernel_shape, self.param_dtype)
        # One 2-D matmul [rows, in] @ [in, out]: with the leading dims flattened, the weight
        # gradient contracts a single dim, and XLA CPU no longer materialises a transposed
        # copy of the output gradient for it (24-30 % faster fwd+bwd, benchmarks/RESULTS.md).
        lead = x.shape[: x.ndim - self.contract]
        fan_in, fan_out = math.prod(kernel_shape[: self.contract]), math.prod(self.features)
        y = jnp.dot(x.reshape(math.prod(lead), fan_in).astype(self.dtype),
                    kernel.reshape(fan_in, fan_out).astype(self.dtype))
        y = y.reshape(lead + tuple(self.features))
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes[self.contract:])
            bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   bias_axes),
                              tuple(self.features), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x**2) + eps) * (offset + scale), the mean over the last
    len(axis_names) axes of x (one: [..., embed]; two: a projection's [..., heads, head_dim]);
    statistics in float32. scale has those axes' shape and logical names; it starts at ones
    (offset 0) or zeros (offset 1: Gemma's 1 + w parameterisation)."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_names: tuple[str, ...] = ('embed',)
    offset: float = 0.0

    @nn.compact
    def __call__(self, x):
        axes = tuple(range(x.ndim - len(self.axis_names), x.ndim))
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param('scale', nn.with_logical_partitioning(init, self.axis_names),
                           x.shape[axes[0]:], self.param_dtype)
        x = x.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + self.eps)
        return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis; statistics in
    float32. [..., embed]; scale (ones) and bias (zeros) [embed] ('embed')."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape, axes = (x.shape[-1],), ('embed',)
        scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, axes),
                           shape, self.param_dtype)
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, axes),
                          shape, self.param_dtype)
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


NORMS = {'rmsnorm': RMSNorm, 'layernorm': LayerNorm,
         'rmsnorm_plus_one': functools.partial(RMSNorm, offset=1.0)}  # Gemma: x * (1 + w)


# ------------------------------------------------------------------- Attention


# ------------------------------------------------------------------- Transformer sublayers

MLP_KINDS = ('swiglu', 'geglu', 'gelu', 'gelu_exact')


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE: [batch, seq, embed] -> [batch, seq, embed].

    Training / full forward: `__call__(x)`, positions 0..seq-1, returns out. Packed
    examples: `__call__(x, positions=..., segment_ids=...)` (int [batch, seq]: each token's
    position within its example, and its example's id): RoPE at those positions, and
    attention only within a segment.
    Decoding: `__call__(x, decode=(positions, kv, k_pos, index))`: positions int [batch, t];
    kv = (k, v) this layer's cache [batch, S, heads, head_dim]; k_pos int [batch, S] the
    positions of every slot after this call (-1 = empty); index: the slot the t new
    entries are written at. Returns (out, (k, v) updated).
    """

    num_heads: int
    head_dim: int
    rope_base: float
    out_init_std: float
    dtype: Any
    param_dtype: Any
    attention: str = 'einsum'
    attention_blocks: int = 0
    num_kv_heads: int = 0  # grouped-query attention: k, v heads (0 = num_heads)
    rope: bool = True  # False: positions come from a learned table (Model.positions)
    rope_scaling: RopeScaling | None = None  # None = 'default' (jaxbig.models.rope)
    qkv_bias: bool = False
    out_bias: bool = False
    window: int = 0  # sliding window: a query sees itself and the window - 1 keys before it
    # RMSNorm of q and k before RoPE: 'head' over each head's head_dim, scale [head_dim]
    # (Qwen3, Gemma 3); 'projection' over all heads at once, scale [heads, head_dim] (OLMo 2)
    qk_norm: str = 'none'
    norm_eps: float = 1e-6  # the q/k norms' epsilon
    norm_offset: float = 0.0  # the q/k norms' offset (1: Gemma's 1 + w)
    rope_dim: int = 0  # RoPE on the first rope_dim features of each head (0: all; GPT-NeoX)
    scale: float = 0.0  # attention logits' factor; 0 = 1 / sqrt(head_dim)
    softcap: float = 0.0  # > 0: logits = softcap * tanh(logits / softcap) (Gemma 2)
    rope_local_base: float = 0.0  # > 0: RoPE of the window layers (unscaled; Gemma 3)

    def _rope(self, t, positions, local):
        """RoPE of q or k; `local` (a traced bool, or None): this layer's kind in a local /
        global pattern, which picks its window's rotary frequencies (rope_local_base)."""
        dim = self.rope_dim or self.head_dim
        inv_freq, factor = frequencies(dim, self.rope_base, self.rope_scaling)
        if local is not None and self.rope_local_base:
            local_freq, local_factor = frequencies(dim, self.rope_local_base)
            inv_freq = jnp.where(local, local_freq, inv_freq)
            factor = jnp.where(local, local_factor, factor)
        return rotate(t, positions, inv_freq, factor, dim)

    @nn.compact
    def __call__(self, x, decode=None, positions=None, segment_ids=None, local=None):
        """local: None (every layer alike), or a traced bool: this layer slides its window
        (True) or attends globally (False), as a per-layer pattern chooses."""
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kv_heads = self.num_kv_heads or self.num_heads
        q, k, v = (  # q [batch, seq, heads, head_dim]; k, v [batch, seq, kv_heads, head_dim]
            Linear((n, self.head_dim), ('embed', 'heads', 'kv'), name=name,
                   use_bias=self.qkv_bias, **dtypes)(x)
            for name, n in (('query', self.num_heads), ('key', kv_heads), ('value', kv_heads))
        )
        if self.qk_norm != 'none':
            axes = ('kv',) if self.qk_norm == 'head' else ('heads', 'kv')
            q, k = (RMSNorm(self.norm_eps, axis_names=axes, offset=self.norm_offset,
                            name=f'{name}_norm', **dtypes)(t)
                    for name, t in (('query', q), ('key', k)))
        if decode is not None:
            positions = decode[0]
        elif positions is None:
            positions = jnp.arange(x.shape[1])
        if self.rope:
            q, k = (self._rope(t, positions, local) for t in (q, k))
        # the window: static (every layer) or chosen per layer (a huge one = global)
        window = self.window if local is None else jnp.where(local, self.window, 2 ** 30)
        logits = dict(scale=self.scale or None, softcap=self.softcap)
        q, k, v = (
            nn.with_logical_constraint(t, ('batch', 'length', 'heads', 'kv')) for t in (q, k, v)
        )
        impl = (splash.auto(x.shape[1], window, self.dtype) if self.attention == 'auto'
                else self.attention)
        if decode is None and impl == 'einsum':
            out = causal_attention(q, k, v, self.attention_blocks or None, segment_ids,
                                   window, **logits)
            new_kv = None
        elif decode is None and impl == 'splash':
            out = splash.splash_attention(q, k, v, segment_ids, window, **logits)
            new_kv = None
        elif decode is None:  # 'xla' | 'cudnn': jax's fused attention entry point
            mask = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
            static = (self.window - 1, 0) if self.window and local is None else None
            if local is not None:  # a per-layer window: an explicit mask
                i = jnp.arange(x.shape[1])
                near = (i[:, None] - i[None, :] < window)[None, None]
                mask = near if mask is None else mask & near
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                               local_window_size=static,
                                               scale=self.scale or None,
                                               implementation=impl)
            new_kv = None
        else:
            _, (k_cache, v_cache), k_pos, index = decode
            write = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
                cache, new.astype(cache.dtype), index, 1
            )
            k_cache, v_cache = write(k_cache, k), write(v_cache, v)
            out = cached_attention(q, k_cache, v_cache, positions, k_pos, window, **logits)
            new_kv = (k_cache, v_cache)
        out = Linear(
            (x.shape[-1],),
            ('heads', 'kv', 'embed'),
            contract=2,
            name='out',
            init_std=self.out_init_std,
            use_bias=self.out_bias,
            **dtypes,
        )(out)
        return out if decode is None else (out, new_kv)


class Mlp(nn.Module):
    """[batch, seq, embed] -> [batch, seq, embed]. kind 'swiglu': down(silu(gate(x)) * up(x))
    (Llama); 'geglu': down(gelu_tanh(gate(x)) * up(x)) (Gemma); 'gelu': down(gelu(up(x)))
    (GPT-2: tanh-approximated gelu; 'gelu_exact': erf)."""

    mlp_dim: int
    out_init_std: float
    dtype: Any
    param_dtype: Any
    kind: str = 'swiglu'
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias)
        up = Linear((self.mlp_dim,), ('embed', 'mlp'), name='up', **dtypes)(x)
        if self.kind in ('swiglu', 'geglu'):
            gate = Linear((self.mlp_dim,), ('embed', 'mlp'), name='gate', **dtypes)(x)
            act = nn.silu if self.kind == 'swiglu' else functools.partial(nn.gelu, approximate=True)
            h = act(gate) * up
        else:
            h = nn.gelu(up, approximate=self.kind == 'gelu')
        h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
        return Linear(
            (x.shape[-1],), ('mlp', 'embed'), name='down', init_std=self.out_init_std, **dtypes
        )(h)
