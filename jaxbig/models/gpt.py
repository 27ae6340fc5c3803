"""GPT: a decoder-only Transformer language model (pre-norm, RoPE, SwiGLU, RMSNorm).

    tokens    int32 [batch, seq]
    embed     nn.Embed(vocab -> embed_dim)                       [batch, seq, embed]
    layers    num_layers x Block (nn.scan over depth, optional nn.remat):
                x = x + attn(rmsnorm(x))   causal multi-head self-attention, RoPE on q, k
                x = x + mlp(rmsnorm(x))    SwiGLU: down(silu(gate(x)) * up(x))
    features  final RMSNorm                                      [batch, seq, embed]
    logits    tied: embed.attend(features); untied: Linear       [batch, seq, vocab]

Switches (defaults above) for the published decoders jaxbig.interop reads: norm
'layernorm', mlp 'gelu', positions 'learned' (+ max_len), qkv/out/mlp biases (GPT-2);
num_kv_heads (grouped-query attention), untied head, rope_base = rope_theta (Llama,
Mistral, Qwen2 with qkv_bias); rope_scaling 'linear' | 'llama3' | 'yarn' with its
rope_* fields (Llama 3.x, long-context Qwen); sliding_window (Mistral, Phi-3); qk_norm
'head' (Qwen3) or 'projection' (OLMo 2); norm 'rmsnorm_plus_one', mlp 'geglu' and
embed_scale (Gemma); norm_position 'both', attention_scale, attn_softcap, logit_softcap
and window_pattern (Gemma 2, 3; Gemma 3's rope_local_base); norm_position 'post' (OLMo 2);
parallel_residual and rope_fraction (GPT-NeoX); the layer layouts are in
jaxbig.models.decoder_block. Training, eval and KV-cached decoding all honour the window,
and a window pattern is a per-layer input of the one scanned layer.

Packed examples (jaxbig.data.pipelines.conditional): `Model(tokens, positions=..., segment_ids=...)`
(int32 [batch, seq]) restarts positions at each example and keeps attention within it, so
a packed row computes what each of its examples would alone; without them (the default)
the forward is unchanged.

Decoding (jaxbig.generate): `Model.decode(tokens, positions, cache)` with the explicit KV
cache pytree of `init_cache` (k, v [layers, batch, max_len, heads, head_dim], each slot's
position, the write index); same parameters, so every checkpoint decodes.

Parameters live in `param_dtype`; matmuls run in `dtype`; norm statistics, RoPE and the
attention softmax run in float32. Logits come back in `dtype` (the loss casts to float32).
Every parameter and the main activations carry logical axis names
('vocab', 'embed', 'heads', 'kv', 'mlp', 'layers'; 'batch', 'length'), so sharding is
chosen by the rules in the config, not here. The layer pieces (Linear, RMSNorm, RoPE,
the attention functions) are in jaxbig.models.layers; this module assembles them.

Preset shapes, their parameter counts and FLOPs per token: jaxbig.models.gpt_size (SIZES,
count_params, active_params, flops_per_token; re-exported here).

`model.moe` (a dict of jaxbig.models.moe.MoeSpec, experts > 0) makes every layer's
feed-forward a Mixture-of-Experts; the model then sows each layer's routing stats
('intermediates' / 'moe'), from which the loss adds the balance and router z-losses.
With `moe.first_dense` = k (DeepSeek's first_k_dense_replace, Qwen3-MoE's mlp_only_layers
[0 .. k-1]) the first k layers keep a dense MLP of mlp_dim: a second stack `dense_layers`
(k layers) runs before `layers` (the num_layers - k MoE ones), each scanned or unrolled
(`dense_layers_<i>`, `layers_<i>`) as the model is.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbig.models.decoder_block import NORM_POSITIONS, Block
from jaxbig.models.gpt_cache import init_cache
from jaxbig.models.gpt_size import SIZES, active_params, count_params, flops_per_token
from jaxbig.models.layers import MLP_KINDS, NORMS, Linear
from jaxbig.models.moe import MoeSpec
from jaxbig.models.rope import RopeScaling

__all__ = ['SIZES', 'Block', 'Model', 'active_params', 'count_params', 'flops_per_token',
           'init_cache']


# 'einsum': layers.causal_attention (fastest on CPU); 'xla' / 'cudnn': jax.nn.dot_product_attention
# with that implementation ('cudnn' = the fused flash kernel on NVIDIA GPUs, bfloat16/float16);
# 'splash': the Pallas splash-attention kernel on TPU (jaxbig/models/splash.py; interpreted,
# slowly, elsewhere).
# 'auto': splash on TPU, cudnn on NVIDIA GPUs (bf16 / fp16), einsum on CPU (splash.auto), chosen
# when the step is traced for its devices (so `jaxbig plan` for a TPU gets splash).
ATTENTION_IMPLEMENTATIONS = ('einsum', 'xla', 'cudnn', 'splash', 'auto')

# Model fields a decoder_block.Block takes under the same name
_BLOCK_FIELDS = ('num_heads', 'mlp_dim', 'dropout', 'rope_base', 'norm_eps', 'attention',
                 'attention_blocks', 'norm', 'mlp', 'num_kv_heads', 'qkv_bias', 'out_bias',
                 'mlp_bias', 'qk_norm', 'norm_position', 'parallel_residual',
                 'attention_scale', 'attn_softcap', 'rope_local_base')

REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _dtype(field, name):
    try:
        return jnp.dtype(name)
    except TypeError:
        msg = f"model.{field}={name!r} is not a dtype; use e.g. 'float32' or 'bfloat16'"
        raise ValueError(msg) from None


class Model(nn.Module):
    """Decoder-only Transformer LM: tokens int32 [batch, seq] -> logits [batch, seq, vocab].

    Fields are plain config values (`config.model`); see the module docstring and SIZES.
    head_dim=0 means embed_dim // num_heads. remat: 'none' | 'full' (save nothing) |
    'dots' (save matmul outputs without batch dims). dtype: compute dtype name;
    param_dtype: storage dtype name. attention: 'einsum' | 'xla' | 'cudnn' | 'splash' | 'auto'
    (training forward only; decoding always uses the cached einsum path). attention_blocks: query
    blocks of the einsum path (see causal_attention); 0 = `attention_blocks(seq)`, 1 = one
    [seq, seq] product.
    """

    vocab_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    embed_dim: int = 128
    mlp_dim: int = 512
    head_dim: int = 0
    dropout: float = 0.0
    tie_embeddings: bool = True
    scan_layers: bool = True
    remat: str = 'none'
    dtype: str = 'float32'
    param_dtype: str = 'float32'
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    attention: str = 'einsum'
    attention_blocks: int = 0
    # Switches for the shapes of published decoders (jaxbig.interop imports GPT-2, Llama,
    # Mistral, Qwen2); the defaults are jaxbig's own (Llama-shaped) GPT.
    norm: str = 'rmsnorm'  # 'rmsnorm' | 'layernorm' (with bias; GPT-2)
    mlp: str = 'swiglu'  # 'swiglu' | 'gelu' (tanh approximation; GPT-2) | 'gelu_exact'
    positions: str = 'rope'  # 'rope' (rope_base = rope_theta) | 'learned' (a max_len table)
    max_len: int = 0  # positions='learned': the table's length (GPT-2's n_positions)
    num_kv_heads: int = 0  # grouped-query attention: 0 = num_heads (multi-head)
    qkv_bias: bool = False  # biases on query/key/value (GPT-2, Qwen2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases on the MLP projections (GPT-2)
    sliding_window: int = 0  # > 0: a token sees itself and the window - 1 before it (Mistral)
    # RMSNorm of q and k before RoPE: 'head' (per head: Qwen3) | 'projection' (OLMo 2)
    qk_norm: str = 'none'
    norm_position: str = 'pre'  # 'pre' | 'post' (OLMo 2) | 'both' (Gemma 2/3): decoder_block
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm(x)) (GPT-NeoX)
    embed_scale: bool = False  # embeddings times sqrt(embed_dim), in `dtype` (Gemma)
    rope_fraction: float = 1.0  # RoPE on this leading fraction of each head (GPT-NeoX)
    # which layers slide the window, a pattern repeated over the layers: 'L' = local
    # (sliding_window), 'G' = global; '' = all local. Gemma 2: 'LG'; Gemma 3: 'LLLLLG'
    window_pattern: str = ''
    rope_local_base: float = 0.0  # > 0: the 'L' layers' RoPE base, unscaled (Gemma 3)
    attention_scale: float = 0.0  # attention logits' factor; 0 = 1 / sqrt(head_dim)
    attn_softcap: float = 0.0  # > 0: attention logits c * tanh(logits / c) (Gemma 2)
    logit_softcap: float = 0.0  # > 0: output logits c * tanh(logits / c) (Gemma 2)
    # RoPE scaling for a context longer than pretraining (jaxbig.models.rope): 'default' |
    # 'linear' | 'llama3' (Llama 3.1+) | 'yarn'; the fields each kind reads:
    rope_scaling: str = 'default'
    rope_factor: float = 1.0  # linear, llama3, yarn
    rope_original_max_len: int = 0  # llama3, yarn: the pretraining context
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_beta_fast: float = 32.0  # yarn
    rope_beta_slow: float = 1.0  # yarn
    rope_attention_factor: float = 0.0  # yarn: cos / sin multiplier, 0 = 0.1 ln(factor) + 1
    moe: Any = None  # Mixture-of-Experts feed-forward: dict of jaxbig.models.moe.MoeSpec

    @property
    def rope_spec(self) -> RopeScaling:
        """The model.rope_* fields as one jaxbig.models.rope.RopeScaling."""
        return RopeScaling(self.rope_scaling, self.rope_factor, self.rope_original_max_len,
                           self.rope_low_freq_factor, self.rope_high_freq_factor,
                           self.rope_beta_fast, self.rope_beta_slow, self.rope_attention_factor)

    def __post_init__(self):  # config's moe dict -> a MoeSpec (hashable: jit's static args)
        if not isinstance(self.moe, (MoeSpec, type(None))):
            object.__setattr__(self, 'moe', MoeSpec.of(self.moe))
        super().__post_init__()

    @property
    def moe_spec(self) -> MoeSpec | None:
        return self.moe

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def _check_switches(self):
        for field, value, allowed in (('norm', self.norm, tuple(NORMS)),
                                      ('mlp', self.mlp, MLP_KINDS),
                                      ('positions', self.positions, ('rope', 'learned'))):
            if value not in allowed:
                raise ValueError(f'model.{field}={value!r}: expected one of {allowed}')
        if self.positions == 'learned' and self.max_len < 1:
            raise ValueError("model.positions='learned' needs model.max_len (the table size)")
        if self.qk_norm not in ('none', 'head', 'projection'):
            raise ValueError(f"model.qk_norm={self.qk_norm!r}: expected 'none', 'head' or "
                             "'projection'")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f'model.norm_position={self.norm_position!r}: expected one of '
                             f'{NORM_POSITIONS}')
        if self.parallel_residual and self.norm_position != 'pre':
            raise ValueError("model.parallel_residual needs model.norm_position='pre'")
        rope_dim = self.resolved_head_dim * self.rope_fraction
        if not 0 < self.rope_fraction <= 1 or rope_dim != int(rope_dim) or int(rope_dim) % 2:
            raise ValueError(f'model.rope_fraction={self.rope_fraction}: expected a fraction '
                             f'in (0, 1] of head dim {self.resolved_head_dim} that is an even '
                             'number of features')
        if self.sliding_window < 0:
            raise ValueError(f'model.sliding_window={self.sliding_window}: expected 0 (off) or '
                             'the number of positions a token sees')
        self.rope_spec.check()
        if self.moe_spec:
            self.moe_spec.check(self.mlp, self.mlp_bias, self.num_layers)
        if set(self.window_pattern) - {'L', 'G'} or (self.window_pattern and
                                                   not self.sliding_window):
            raise ValueError(f'model.window_pattern={self.window_pattern!r}: expected L (local: '
                             "model.sliding_window) and G (global) layers, e.g. 'LG', with a "
                             'sliding_window')
        if self.rope_local_base and 'G' not in self.window_pattern:
            raise ValueError('model.rope_local_base needs global layers in model.window_pattern')
        if self.attn_softcap and self.attention != 'einsum':
            raise ValueError(f'model.attn_softcap needs model.attention=\'einsum\' (the fused '
                             f'{self.attention!r} kernels do not cap logits)')
        if self.num_kv_heads < 0 or self.num_heads % self.resolved_kv_heads:
            raise ValueError(f'model.num_kv_heads={self.num_kv_heads} must divide '
                             f'model.num_heads={self.num_heads} (0 = num_heads)')

    def setup(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f'model.attention={self.attention!r}: expected one of '
                             f'{ATTENTION_IMPLEMENTATIONS}')
        if self.attention_blocks < 0:
            raise ValueError(f'model.attention_blocks={self.attention_blocks}: expected 0 '
                             '(automatic) or a number of query blocks that divides seq')
        if self.remat != 'none' and self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}: expected one of 'none', 'full', 'dots'")
        if not self.head_dim and self.embed_dim % self.num_heads:
            raise ValueError(
                f'model.embed_dim={self.embed_dim} is not divisible by model.num_heads='
                f'{self.num_heads}: change one of them or set model.head_dim'
            )
        self._check_switches()
        if self.positions == 'rope' and self.resolved_head_dim % 2:
            raise ValueError(
                f'head dim {self.resolved_head_dim} is odd; RoPE needs an even one '
                '(set model.head_dim or change embed_dim / num_heads)'
            )
        dtypes = dict(
            dtype=_dtype('dtype', self.dtype), param_dtype=_dtype('param_dtype', self.param_dtype)
        )
        self.embed = nn.Embed(
            self.vocab_size,
            self.embed_dim,
            **dtypes,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ('vocab', 'embed')
            ),
        )
        if self.positions == 'learned':  # GPT-2's wpe: [max_len, embed]
            self.pos_embed = nn.Embed(
                self.max_len, self.embed_dim, **dtypes,
                embedding_init=nn.with_logical_partitioning(
                    nn.initializers.normal(0.01), (None, 'embed')),
            )
        self.embed_dropout = nn.Dropout(self.dropout)
        block_args = dict(
            {k: getattr(self, k) for k in _BLOCK_FIELDS},
            head_dim=self.resolved_head_dim,
            rope=self.positions == 'rope',
            rope_scaling=self.rope_spec if self.rope_scaling != 'default' else None,
            rope_dim=int(self.resolved_head_dim * self.rope_fraction),
            window=self.sliding_window,
            moe=self.moe_spec,
            **dtypes,
            out_init_std=0.02 / math.sqrt(2 * self.num_layers),  # GPT-2's residual scaling
        )
        block = Block
        if self.remat != 'none':  # static_argnums counts self as 0: `train` is argument 2
            block = nn.remat(
                Block,
                policy=REMAT_POLICIES[self.remat],
                prevent_cse=not self.scan_layers,
                static_argnums=(2,),
            )
        for name, _, n in self._stacks():
            args = dict(block_args, moe=None) if name == 'dense_layers' else block_args
            if self.scan_layers:  # one layer traced once; params stacked on a 'layers' axis
                stack = nn.scan(
                    block,
                    variable_axes={'params': 0},
                    # train, positions, kv (per layer: scanned), k_pos, index, segment_ids,
                    # local (per layer when there is a window pattern)
                    in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast,
                             nn.broadcast, 0 if 'G' in self.window_pattern else nn.broadcast),
                    split_rngs={'params': True, 'dropout': True},
                    length=n,
                    metadata_params={nn.PARTITION_NAME: 'layers'},
                )(**args)
            else:  # params named layers_0, layers_1, ... (dense_layers_0, ...)
                stack = [block(**args) for _ in range(n)]
            setattr(self, name, stack)  # (named by the attribute, as `self.x = ...` is)
        self.final_norm = NORMS[self.norm](self.norm_eps, **dtypes)
        if not self.tie_embeddings:
            self.unembed = Linear((self.vocab_size,), ('embed', 'vocab'), **dtypes)

    def _local_per_layer(self) -> list:
        """Each layer's kind under window_pattern: True = local (its window), False =
        global; [None] * layers without global layers (every layer alike)."""
        if 'G' not in self.window_pattern:
            return [None] * self.num_layers
        p = self.window_pattern
        return [p[i % len(p)] == 'L' for i in range(self.num_layers)]

    def _stacks(self) -> list[tuple[str, int, int]]:
        """[(attribute, first layer, number of layers)]: 'dense_layers' (moe.first_dense
        of them, when set), then 'layers'."""
        k = self.moe_spec.first_dense if self.moe_spec else 0
        return ([('dense_layers', 0, k)] if k else []) + [('layers', k, self.num_layers - k)]

    def _through(self, x, train, positions, segment_ids=None, cache=None, k_pos=None,
                 index=None):
        """x [batch, seq, embed] through every layer -> (x, the MoE layers' routing stats
        stacked [moe layers, ...] or None); decoding (cache given) -> (x, (k, v)) with the
        cache's k, v [layers, ...] updated."""
        kinds, outs = self._local_per_layer(), []
        for name, first, n in self._stacks():
            stack, last = getattr(self, name), first + n
            kv = None if cache is None else (cache['k'][first:last], cache['v'][first:last])
            if self.scan_layers:
                local = None if kinds[0] is None else jnp.asarray(kinds[first:last])
                x, out = stack(x, train, positions, kv, k_pos, index, segment_ids, local)
            else:
                per = []
                for i, layer in enumerate(stack):
                    layer_kv = None if kv is None else (kv[0][i], kv[1][i])
                    x, o = layer(x, train, positions, layer_kv, k_pos, index, segment_ids,
                                 kinds[first + i])
                    per.append(o)
                out = jax.tree.map(lambda *a: jnp.stack(a), *per) if per[0] is not None else None
            outs.append(out)
        if cache is not None:
            return x, tuple(jnp.concatenate(parts) for parts in zip(*outs))
        return x, outs[-1]  # the dense layers have no routing stats

    def _logits(self, features):
        """features [batch, seq, embed] -> logits [batch, seq, vocab] (tied or not; softcap)."""
        logits = self.embed.attend(features) if self.tie_embeddings else self.unembed(features)
        if self.logit_softcap:
            cap = self.logit_softcap
            logits = (cap * jnp.tanh(logits.astype(jnp.float32) / cap)).astype(logits.dtype)
        return logits

    def _embed(self, tokens, positions):
        """Token embeddings, plus the learned position table's rows (positions [seq] or
        [batch, seq]; padding's -1 reads row 0, never attended to) when positions='learned'."""
        x = self.embed(tokens)
        if self.embed_scale:  # Gemma multiplies by sqrt(d) rounded to the compute dtype
            x = x * jnp.asarray(math.sqrt(self.embed_dim), x.dtype)
        if self.positions == 'learned':
            x = x + self.pos_embed(jnp.clip(positions, 0, self.max_len - 1))
        return x

    def features(self, tokens, *, train: bool = False, positions=None, segment_ids=None):
        """tokens int32 [batch, seq] -> final-normed hidden states [batch, seq, embed].
        positions, segment_ids: None, or int32 [batch, seq] for packed examples (each
        token's position within its example; the example's id): attention stays within
        a segment."""
        x = self._embed(tokens, jnp.arange(tokens.shape[1]) if positions is None else positions)
        x = self.embed_dropout(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        x, stats = self._through(x, train, positions, segment_ids)  # stats [moe layers, ...]
        if stats is not None:  # read by the loss: apply(..., mutable=['intermediates'])
            self.sow('intermediates', 'moe', stats)
        return self.final_norm(x)

    def decode(self, tokens, positions, cache):
        """One decoding call with a KV cache (prefill: t = prompt length; a step: t = 1).

        tokens int32 [batch, t]; positions int32 [batch, t], the RoPE position of each token,
        -1 for padding (never attended to); cache from `init_cache`. The t new entries are
        written at slots cache['index'] .. + t. Returns (logits [batch, t, vocab], cache).
        Inference only (train=False).
        """
        x = nn.with_logical_constraint(self._embed(tokens, positions),
                                       ('batch', 'length', 'embed'))
        index = cache['index']
        k_pos = jax.lax.dynamic_update_slice_in_dim(cache['pos'], positions, index, 1)
        x, (k, v) = self._through(x, False, positions, None, cache, k_pos, index)
        logits = self._logits(self.final_norm(x))
        cache = dict(k=k, v=v, pos=k_pos, index=index + tokens.shape[1])
        return logits, cache

    def __call__(self, tokens, *, train: bool = False, positions=None, segment_ids=None):
        """tokens int32 [batch, seq] -> logits [batch, seq, vocab] in the compute dtype;
        positions / segment_ids: packed examples (see `features`)."""
        return self.logits(self.features(tokens, train=train, positions=positions,
                                         segment_ids=segment_ids))

    def logits(self, features):
        """The head: `features`' output [batch, seq, embed] -> logits [batch, seq, vocab]."""
        return nn.with_logical_constraint(self._logits(features), ('batch', 'length', 'vocab'))
