"""BERT: a bidirectional Transformer encoder with a masked-LM head, in Hugging Face BERT's
layout (so `jaxbig import` loads BertModel / BertForMaskedLM /
BertForSequenceClassification, interop/bert.py), with switches for the pre-norm and
rotary variants. Trained by `loss.name='masked_lm'` (experiments/mlm.py).

    tokens       int32 [B, T]; mask [B, T] (1 = a real token, attended to; None = all);
                 token_types int32 [B, T] (segment ids; None = all 0, as HF)
    embed        word [V, E] + token-type [type_vocab_size, E] (row 0 when no types are
                 given; none when type_vocab_size=0); class_token=True prepends a learned
                 [CLS] vector (jaxbig's byte vocabulary has no [CLS] id; HF checkpoints
                 take the tokenizer's) -> [B, T', E], T' = T (+ 1);
                 positions='learned': + a position table [max_len, E] over the T' tokens
                 norm='post': a LayerNorm over the sum (BERT's embeddings.LayerNorm)
    encoder      depth x block (nn.scan over depth), bidirectional attention to the keys
                 the mask keeps; positions='rope': rotary q, k (no table) instead
                 norm='post' (BERT):  x = LN(x + Attn(x));  x = LN(x + MLP(x))
                 norm='pre':          x = x + Attn(LN(x));  x = x + MLP(LN(x));  final LN
                 -> `hidden` [B, T', E] (HF's last_hidden_state)
    features     pool='cls': the hidden state at position 0 (the class token, or the
                 tokenizer's [CLS]); 'mean': the mean over the real tokens (the class
                 token included); pooler=True: then tanh(Dense(E)) (HF's pooler_output)
                 -> [B, E]
    MLM head     Dense(E) -> act -> LayerNorm -> h . word^T + bias (decoder tied to the word
                 embeddings) -> logits [B, T, V] (the class token's row dropped)
    __call__     head='mlm': the MLM logits [B, T, V]; head='none': features [B, E]

MLP: Dense(mlp_dim) -> mlp_act ('gelu_exact' erf, BERT's; 'gelu' tanh; 'quick_gelu') ->
Dense(E). Dropout (`dropout`, BERT's hidden_dropout_prob) after the embeddings and on the
attention and MLP outputs; none on the attention probabilities. Params and compute are
float32 (`jax.nn.dot_product_attention`). Parameters carry logical axes ('vocab',
'embed', 'heads', 'kv', 'mlp', 'length', 'layers'); the attention kernels are named
`encoder/layers/attn/{query,key,value,out}` like the GPT's, so the LoRA targets of
experiments/finetune_text.py fit both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbig.models.layers import LayerNorm, Linear, apply_rope
from jaxbig.models.vit import MLP_ACTS, activation

NORMS = ('post', 'pre')
POSITIONS = ('learned', 'rope')
POOLS = ('cls', 'mean')
HEADS = ('mlm', 'none')

# Shapes for experiments/mlm.py (tiny matches the GPT 'tiny' of gpt.SIZES: 4 x 128, MLP 384,
# so the two backbones compare at equal compute; 'base' is BERT-base).
SIZES = {
    'tiny': dict(depth=4, num_heads=4, width=128, mlp_dim=384),
    'small': dict(depth=6, num_heads=4, width=256, mlp_dim=1024),
    'base': dict(depth=12, num_heads=12, width=768, mlp_dim=3072),
}


def _embed_init(axes):
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)


class Embeddings(nn.Module):
    """tokens int32 [B, T], token_types int32 [B, T] or None -> [B, T', E] (see module doc)."""

    vocab_size: int
    width: int
    max_len: int
    type_vocab_size: int
    class_token: bool
    learned_positions: bool

    def setup(self):
        self.word = nn.Embed(self.vocab_size, self.width,
                             embedding_init=_embed_init(('vocab', 'embed')))
        if self.type_vocab_size:
            self.type_embedding = self.param('type_embedding', _embed_init((None, 'embed')),
                                             (self.type_vocab_size, self.width))
        if self.class_token:
            self.cls = self.param('cls', _embed_init((None, None, 'embed')), (1, 1, self.width))
        if self.learned_positions:
            self.pos_embedding = self.param('pos_embedding', _embed_init(('length', 'embed')),
                                            (self.max_len, self.width))

    def __call__(self, tokens, token_types):
        x = self.word(tokens)
        if self.type_vocab_size:
            table = self.type_embedding
            x = x + (table[0] if token_types is None else table[token_types])
        if self.class_token:
            x = jnp.concatenate([jnp.broadcast_to(self.cls, (x.shape[0], 1, self.width)), x], 1)
        if self.learned_positions:
            if x.shape[1] > self.max_len:
                raise ValueError(f'text length {x.shape[1]} (with the class token) > model '
                                 f'max_len={self.max_len}')
            x = x + self.pos_embedding[: x.shape[1]]
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

    def attend(self, h):
        """h [..., E] -> h . word^T [..., V] (the tied MLM decoder)."""
        return self.word.attend(h)


class Block(nn.Module):
    """One post- or pre-norm encoder layer; x [B, T, E], visible bool [B, 1, 1, T] or None.
    Returns (x, None), the body of nn.scan."""

    num_heads: int
    mlp_dim: int
    dropout: float
    norm: str
    rope: bool
    rope_base: float
    use_bias: bool
    norm_eps: float
    mlp_act: str

    @nn.compact
    def __call__(self, x, visible, train: bool):
        width = x.shape[-1]
        drop = nn.Dropout(self.dropout, deterministic=not train)
        bias = dict(use_bias=self.use_bias)
        pre = self.norm == 'pre'
        attn_norm = LayerNorm(self.norm_eps, name='attn_norm')
        mlp_norm = LayerNorm(self.norm_eps, name='mlp_norm')

        h = attn_norm(x) if pre else x
        h = SelfAttention(self.num_heads, self.rope, self.rope_base, self.use_bias,
                          name='attn')(h, visible)
        x = x + drop(h)
        x = nn.with_logical_constraint(x if pre else attn_norm(x), ('batch', 'length', 'embed'))
        h = mlp_norm(x) if pre else x
        h = Linear((self.mlp_dim,), ('embed', 'mlp'), name='mlp_in', **bias)(h)
        h = Linear((width,), ('mlp', 'embed'), name='mlp_out', **bias)(
            activation(h, self.mlp_act))
        x = x + drop(h)
        return nn.with_logical_constraint(x if pre else mlp_norm(x),
                                          ('batch', 'length', 'embed')), None


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention [B, T, E] -> [B, T, E]; visible bool
    [B, 1, 1, T] (keys a query may attend to) or None; rope: rotary q, k at 0..T-1."""

    num_heads: int
    rope: bool
    rope_base: float
    use_bias: bool

    @nn.compact
    def __call__(self, x, visible):
        width = x.shape[-1]
        bias = dict(use_bias=self.use_bias)
        q, k, v = (Linear((self.num_heads, width // self.num_heads), ('embed', 'heads', 'kv'),
                          name=n, **bias)(x) for n in ('query', 'key', 'value'))
        if self.rope:
            positions = jnp.arange(x.shape[1])
            q, k = (apply_rope(t, positions, self.rope_base) for t in (q, k))
        h = jax.nn.dot_product_attention(q, k, v, mask=visible)
        return Linear((width,), ('heads', 'kv', 'embed'), contract=2, name='out', **bias)(h)


class Encoder(nn.Module):
    """depth x Block (scanned or unrolled) + the final LayerNorm of the pre-norm variant."""

    depth: int
    block: dict
    scan_layers: bool

    @nn.compact
    def __call__(self, x, visible, train: bool):
        if self.scan_layers:
            layers = nn.scan(Block, variable_axes={'params': 0},
                             in_axes=(nn.broadcast, nn.broadcast),
                             split_rngs={'params': True, 'dropout': True}, length=self.depth,
                             metadata_params={nn.PARTITION_NAME: 'layers'})(**self.block,
                                                                             name='layers')
            x, _ = layers(x, visible, train)
        else:
            for i in range(self.depth):
                x, _ = Block(**self.block, name=f'layers_{i}')(x, visible, train)
        if self.block['norm'] == 'pre':
            x = LayerNorm(self.block['norm_eps'], name='final_norm')(x)
        return x


class Model(nn.Module):
    """BERT: tokens int32 [B, T] -> MLM logits [B, T, V] (head='mlm') or pooled features
    [B, E] (head='none'). Fields: see the module docstring."""

    vocab_size: int = 257  # 256 bytes + [MASK] (id 256; loss.mask_id)
    max_len: int = 129  # position table rows (the class token takes one)
    type_vocab_size: int = 2
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 384
    dropout: float = 0.0
    scan_layers: bool = True
    norm: str = 'post'
    positions: str = 'learned'
    rope_base: float = 10000.0
    use_bias: bool = True
    norm_eps: float = 1e-12
    mlp_act: str = 'gelu_exact'
    class_token: bool = True
    pool: str = 'cls'
    pooler: bool = False
    head: str = 'mlm'

    def setup(self):
        for field, allowed in (('norm', NORMS), ('positions', POSITIONS), ('pool', POOLS),
                               ('head', HEADS), ('mlp_act', MLP_ACTS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f'model {field} {getattr(self, field)!r}: expected one of '
                                 f'{allowed}')
        if self.width % self.num_heads:
            raise ValueError(f'model num_heads={self.num_heads} does not divide '
                             f'width={self.width}')
        self.embed = Embeddings(self.vocab_size, self.width, self.max_len,
                                self.type_vocab_size, self.class_token,
                                self.positions == 'learned')
        if self.norm == 'post':
            self.embed_norm = LayerNorm(self.norm_eps)
        self.embed_dropout = nn.Dropout(self.dropout)
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
                     norm=self.norm, rope=self.positions == 'rope', rope_base=self.rope_base,
                     use_bias=self.use_bias, norm_eps=self.norm_eps, mlp_act=self.mlp_act)
        self.encoder = Encoder(self.depth, block, self.scan_layers)
        if self.pooler:
            self.pooler_dense = Linear((self.width,), ('embed', 'mlp'), use_bias=True)
        if self.head == 'mlm':
            self.mlm_dense = Linear((self.width,), ('embed', 'mlp'), use_bias=True)
            self.mlm_norm = LayerNorm(self.norm_eps)
            self.mlm_bias = self.param('mlm_bias', nn.with_logical_partitioning(
                nn.initializers.zeros, ('vocab',)), (self.vocab_size,))

    def _valid(self, tokens, mask):
        """bool [B, T'] real tokens (the class token is one); mask None = all."""
        valid = jnp.ones(tokens.shape, bool) if mask is None else mask > 0
        if self.class_token:
            valid = jnp.concatenate([jnp.ones((tokens.shape[0], 1), bool), valid], 1)
        return valid

    def hidden(self, tokens, mask=None, token_types=None, *, train: bool = False):
        """-> the encoder's output [B, T', E] (T' = T + 1 with the class token)."""
        x = self.embed(tokens, token_types)
        if self.norm == 'post':
            x = self.embed_norm(x)
        x = self.embed_dropout(x, deterministic=not train)
        visible = self._valid(tokens, mask)[:, None, None, :]
        return self.encoder(x, visible, train)

    def features(self, tokens, mask=None, token_types=None, *, train: bool = False):
        """-> pooled features [B, E] (pool, then the tanh pooler when pooler=True)."""
        x = self.hidden(tokens, mask, token_types, train=train)
        if self.pool == 'cls':
            x = x[:, 0]
        else:
            w = self._valid(tokens, mask).astype(x.dtype)[..., None]
            x = (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        return jnp.tanh(self.pooler_dense(x)) if self.pooler else x

    def mlm_logits(self, tokens, mask=None, token_types=None, *, train: bool = False):
        """-> masked-LM logits [B, T, V] at every input position (float32)."""
        if self.head != 'mlm':
            raise ValueError("model head='none' has no MLM head (set model.head='mlm')")
        x = self.hidden(tokens, mask, token_types, train=train)
        x = x[:, 1:] if self.class_token else x
        h = self.mlm_norm(activation(self.mlm_dense(x), self.mlp_act))
        return self.embed.attend(h).astype(jnp.float32) + self.mlm_bias

    def __call__(self, tokens, mask=None, token_types=None, *, train: bool = False):
        if self.head == 'none':
            return self.features(tokens, mask, token_types, train=train)
        if self.pooler and self.is_initializing():  # create the pooler's params too
            self.features(tokens, mask, token_types)
        return self.mlm_logits(tokens, mask, token_types, train=train)
