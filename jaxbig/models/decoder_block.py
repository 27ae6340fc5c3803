"""One decoder layer of jaxbig's GPT (jaxbig.models.gpt), with the residual layouts of the
published decoders it imports. [batch, seq, embed] -> same.

    norm_position 'pre'   x = x + attn(norm(x));  x = x + mlp(norm(x))        (Llama, GPT-2)
                  'post'  x = x + norm(attn(x));  x = x + norm(mlp(x))        (OLMo 2)
                  'both'  x = x + norm(attn(norm(x)));  x = x + norm(mlp(norm(x)))
                                                                              (Gemma 2 / 3)
    parallel_residual     x = x + attn(attn_norm(x)) + mlp(mlp_norm(x))       (GPT-NeoX)

Parameters: attn_norm / mlp_norm (the norms before a sublayer), post_attn_norm /
post_mlp_norm (after it), attn (layers.Attention), mlp (layers.Mlp, or moe.MoeMlp when
`moe` is a jaxbig.models.moe.MoeSpec: a Mixture-of-Experts feed-forward).
"""

from typing import Any

import flax.linen as nn

from jaxbig.models.layers import NORMS, Attention, Mlp
from jaxbig.models.moe import MoeMlp

NORM_POSITIONS = ('pre', 'post', 'both')


class Block(nn.Module):
    """A decoder layer (see the module docstring). [batch, seq, embed] -> same.

    Returns (x, None) so that it can be the body of nn.scan (carry, per-layer output);
    with `moe`, (x, the MoE layer's routing stats) (jaxbig.models.moe).
    Packed examples: `__call__(x, train, positions, segment_ids=...)` (see Attention).
    local: None, or a traced bool: this layer's kind in a local / global window pattern.
    Decoding: `__call__(x, train, positions, kv, k_pos, index)` (see Attention) returns
    (x, kv updated); under nn.scan kv is stacked on a leading layers axis.
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout: float
    rope_base: float
    norm_eps: float
    out_init_std: float
    dtype: Any
    param_dtype: Any
    attention: str = 'einsum'
    attention_blocks: int = 0
    norm: str = 'rmsnorm'
    mlp: str = 'swiglu'
    num_kv_heads: int = 0
    rope: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    rope_scaling: Any = None  # a jaxbig.models.rope.RopeScaling, or None (default)
    rope_dim: int = 0
    window: int = 0
    qk_norm: str = 'none'
    norm_position: str = 'pre'
    parallel_residual: bool = False
    attention_scale: float = 0.0
    attn_softcap: float = 0.0
    rope_local_base: float = 0.0
    moe: Any = None  # a jaxbig.models.moe.MoeSpec, or None (a dense MLP)

    def _norm(self, name):
        return NORMS[self.norm](self.norm_eps, name=name, dtype=self.dtype,
                                param_dtype=self.param_dtype)

    @nn.compact
    def __call__(self, x, train: bool, positions=None, kv=None, k_pos=None, index=None,
                 segment_ids=None, local=None):
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        pre, post = self.norm_position in ('pre', 'both'), self.norm_position in ('post', 'both')
        attn = Attention(self.num_heads, self.head_dim, self.rope_base, self.out_init_std,
                         name='attn', attention=self.attention,
                         attention_blocks=self.attention_blocks, num_kv_heads=self.num_kv_heads,
                         rope=self.rope, qkv_bias=self.qkv_bias, out_bias=self.out_bias,
                         rope_scaling=self.rope_scaling, window=self.window,
                         qk_norm=self.qk_norm, norm_eps=self.norm_eps,
                         norm_offset=1.0 if self.norm == 'rmsnorm_plus_one' else 0.0,
                         rope_dim=self.rope_dim, scale=self.attention_scale,
                         softcap=self.attn_softcap, rope_local_base=self.rope_local_base,
                         **dtypes)
        stats = None
        if self.moe is None:
            mlp = Mlp(self.mlp_dim, self.out_init_std, name='mlp', kind=self.mlp,
                      use_bias=self.mlp_bias, **dtypes)
        else:
            moe = MoeMlp(self.moe, self.mlp_dim, self.out_init_std, name='mlp', **dtypes)

            def mlp(h):
                nonlocal stats
                h, stats = moe(h, decode=kv is not None)
                return h
        h = self._norm('attn_norm')(x) if pre else x
        if kv is None:
            h = attn(h, positions=positions, segment_ids=segment_ids, local=local)
        else:
            h, kv = attn(h, decode=(positions, kv, k_pos, index), local=local)
        if post:
            h = self._norm('post_attn_norm')(h)
        if self.parallel_residual:  # both sublayers read the layer's input
            m = mlp(self._norm('mlp_norm')(x))
            x = nn.with_logical_constraint(x + drop(h) + drop(m), ('batch', 'length', 'embed'))
            return x, kv if kv is not None else stats
        x = nn.with_logical_constraint(x + drop(h), ('batch', 'length', 'embed'))
        h = mlp(self._norm('mlp_norm')(x) if pre else x)
        if post:
            h = self._norm('post_mlp_norm')(h)
        x = nn.with_logical_constraint(x + drop(h), ('batch', 'length', 'embed'))
        return x, kv if kv is not None else stats
