"""T5: an encoder-decoder Transformer in Hugging Face T5's layout (so `jaxbig import` loads
T5ForConditionalGeneration, interop/t5.py). Trained by `loss.name='seq2seq'`
(experiments/seq2seq.py); generated from by this module's `generate`. The layer pieces
(buckets, attention, feed-forward, blocks) are jaxbig/models/t5_layers.py.

    enc_tokens  int32 [b, S] right-padded; enc_mask [b, S] (1 = a real token)
    dec_inputs  int32 [b, T]: decoder_start_id, then the targets shifted right;
    dec_mask    [b, T] (1 = a real position; None = all)
    shared      nn.Embed [V, E], read by the encoder and the decoder
    encoder     num_layers x [x + Attn(RMSNorm(x)); x + FFN(RMSNorm(x))], bidirectional
                self-attention to the keys enc_mask keeps; final RMSNorm -> [b, S, E]
    decoder     num_decoder_layers x [x + causal self-Attn(RMSNorm(x)); x + cross-Attn(
                RMSNorm(x), encoder output); x + FFN(RMSNorm(x))]; final RMSNorm
    head        tied: shared.attend(h * E**-0.5) (the rescale: `rescale_head`, None = when
                tied, T5's rule); untied: `lm_head` Linear [E, V]  -> logits [b, T, V]

Attention: q, k, v [b, *, heads, head_dim] (head_dim = T5's d_kv; heads * head_dim need
not be E), logits NOT scaled by 1/sqrt(head_dim) (T5 folds that into the init), plus the
relative position bias of `relative_position_bucket`: a [num_buckets, heads] table per
stack (bidirectional buckets in the encoder, causal ones in the decoder), computed once per
stack and added in every self-attention layer (HF stores it in layer 0); cross-attention
has none. FFN `feed_forward`: T5's feed_forward_proj, '[gated-]ACT' with ACT in ACTS
(`relu`: wo(relu(wi x)); `gated-gelu`: wo(gelu_tanh(wi_0 x) * wi_1 x), HF's alias).
RMSNorm (T5LayerNorm) and the softmax in float32. Dropout (`dropout`, HF's dropout_rate)
on the embeddings, each sublayer's output and the final norms' outputs.

Decoding (this module's `generate`, one compiled `lax.while_loop`): `start_decoding`
encodes the prompts once and computes every layer's cross-attention K/V from the encoder
output; `decode_step` runs t new decoder tokens against the self-attention KV cache
(`init_cache`). A layer-scanned model is unrolled for decoding (`decoding_form`).

Init (jaxbig's own training; HF's `_init_weights`): embeddings N(0, 1); q N(0, (E d)^-1/2);
k, v N(0, E^-1/2); out N(0, (h d)^-1/2); wi N(0, E^-1/2); wo N(0, d_ff^-1/2); the
relative-bias tables N(0, E^-1/2); an untied lm_head N(0, E^-1/2). Parameters carry
logical axes ('vocab', 'embed', 'heads', 'kv', 'mlp', 'layers').
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbig.config import ConfigError
from jaxbig.models.layers import Linear, RMSNorm
from jaxbig.models.t5_layers import (ACTS, DecoderBlock, EncoderBlock, RelativeBias,  # noqa: F401
                                     _constrain, _normal, feed_forward_kind,
                                     relative_position_bucket)

# Shapes for experiments/seq2seq.py: 'tiny' has 2 + 2 layers of the GPT 'tiny' width
# (jaxbig.models.gpt.SIZES: 4 x 128, MLP 384), ~1.0 M non-embedding params vs its 0.85 M.
SIZES = {
    'tiny': dict(num_layers=2, num_heads=4, embed_dim=128, mlp_dim=384),
    'small': dict(num_layers=4, num_heads=4, embed_dim=256, mlp_dim=1024),
    't5_small': dict(num_layers=6, num_heads=8, embed_dim=512, mlp_dim=2048, head_dim=64),
}


class Stack(nn.Module):
    """The encoder (causal=False) or the decoder: relative bias, layers, final norm."""

    num_layers: int
    causal: bool
    block: dict
    num_buckets: int
    max_distance: int
    scan_layers: bool

    def setup(self):
        b = self.block
        self.relative_bias = RelativeBias(b['num_heads'], self.num_buckets, self.max_distance,
                                          not self.causal, b['embed_dim'] ** -0.5)
        Block = DecoderBlock if self.causal else EncoderBlock
        if self.scan_layers:
            n_args = 5 if self.causal else 3  # everything but x is the same for every layer
            self.layers = nn.scan(Block, variable_axes={'params': 0},
                                  in_axes=(nn.broadcast,) * n_args,
                                  split_rngs={'params': True, 'dropout': True},
                                  length=self.num_layers,
                                  metadata_params={nn.PARTITION_NAME: 'layers'})(**b)
        else:
            self.layers = [Block(**b) for _ in range(self.num_layers)]
        self.final_norm = RMSNorm(b['norm_eps'], dtype=b['dtype'], param_dtype=b['param_dtype'])
        self.drop = nn.Dropout(b['dropout'])

    def _layers(self, x, *args):
        if self.scan_layers:
            return self.layers(x, *args)[0]
        for layer in self.layers:
            x, _ = layer(x, *args)
        return x

    def __call__(self, x, mask, enc=None, enc_mask=None, *, train: bool = False):
        """Encoder: x [b, S, E], mask [b, S] -> [b, S, E]. Decoder: x [b, T, E], mask [b, T]
        or None, enc [b, S, E], enc_mask [b, S] -> [b, T, E]."""
        pos = jnp.arange(x.shape[1])
        bias = self.relative_bias(pos, pos)
        keys = jnp.ones(x.shape[:2], bool) if mask is None else mask > 0
        visible = keys[:, None, None, :]
        x = self.drop(x, deterministic=not train)
        if self.causal:
            visible = visible & (pos[None, :] <= pos[:, None])[None, None]
            x = self._layers(x, enc, bias, visible, (enc_mask > 0)[:, None, None, :], train)
        else:
            x = self._layers(x, bias, visible, train)
        return self.drop(self.final_norm(x), deterministic=not train)

    def cross_kv(self, enc):
        """(k, v) [layers, b, S, heads, head_dim] of every decoder layer (unrolled only)."""
        kvs = [layer.cross_kv(enc) for layer in self._unrolled()]
        return jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs])

    def decode(self, x, cache):
        """x [b, t, E] at positions index .. index + t - 1 against the cache (see
        `init_cache`) -> (final-normed x [b, t, E], self-attention (k, v) updated)."""
        index, slots = cache['index'], cache['k'].shape[2]
        q_pos = index + jnp.arange(x.shape[1])
        k_pos = jnp.arange(slots)
        bias = self.relative_bias(q_pos, k_pos)
        visible = (k_pos[None, :] <= q_pos[:, None])[None, None]
        cross_visible = cache['enc_mask'][:, None, None, :]
        ks, vs = [], []
        for i, layer in enumerate(self._unrolled()):
            x, (k, v) = layer.decode(x, bias, visible, cross_visible,
                                     (cache['k'][i], cache['v'][i]),
                                     (cache['cross_k'][i], cache['cross_v'][i]), index)
            ks.append(k)
            vs.append(v)
        return self.final_norm(x), (jnp.stack(ks), jnp.stack(vs))

    def _unrolled(self):
        if self.scan_layers:
            raise ValueError('t5: decoding needs unrolled layers; use t5.decoding_form')
        return self.layers


def _dtype(field, name):
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ConfigError(f"model.{field}={name!r} is not a dtype; use e.g. 'float32'") from None


class Model(nn.Module):
    """T5 encoder-decoder: (enc_tokens, enc_mask, dec_inputs, dec_mask) -> logits
    [b, T, vocab]. Fields are config values (`config.model`); see the module docstring.
    head_dim 0 = embed_dim // num_heads; num_decoder_layers 0 = num_layers."""

    vocab_size: int = 256
    num_layers: int = 2
    num_decoder_layers: int = 0
    num_heads: int = 4
    embed_dim: int = 128
    head_dim: int = 0
    mlp_dim: int = 384
    feed_forward: str = 'gated-gelu'  # T5's feed_forward_proj: 'relu' | 'gated-gelu' | ...
    relative_buckets: int = 32  # relative_attention_num_buckets
    relative_max_distance: int = 128  # relative_attention_max_distance
    dropout: float = 0.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    rescale_head: Any = None  # h * embed_dim**-0.5 before the head; None = tie_embeddings
    decoder_start_id: int = 0  # T5: the pad id
    scan_layers: bool = False
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // max(self.num_heads, 1)

    @property
    def resolved_decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    def check(self):
        """One-line ConfigErrors for unusable field values."""
        try:
            feed_forward_kind(self.feed_forward)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for field in ('vocab_size', 'num_layers', 'num_heads', 'embed_dim', 'mlp_dim'):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise ConfigError(f'model.{field}={getattr(self, field)!r}: must be an int >= 1')
        if not self.head_dim and self.embed_dim % self.num_heads:
            raise ConfigError(f'model.embed_dim={self.embed_dim} is not divisible by '
                              f'model.num_heads={self.num_heads}: set model.head_dim')
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4:
            raise ConfigError(f'model.relative_buckets={self.relative_buckets}, '
                              f'relative_max_distance={self.relative_max_distance}: need '
                              '>= 4 buckets and a max distance above a quarter of them')
        if not 0 <= self.decoder_start_id < self.vocab_size:
            raise ConfigError(f'model.decoder_start_id={self.decoder_start_id}: outside the '
                              f'vocabulary [0, {self.vocab_size})')
        if self.rescale_head not in (None, True, False):
            raise ConfigError(f'model.rescale_head={self.rescale_head!r}: expected true, false '
                              'or null (= tie_embeddings)')

    def setup(self):
        self.check()
        d = dict(dtype=_dtype('dtype', self.dtype), param_dtype=_dtype('param_dtype',
                                                                       self.param_dtype))
        self.shared = nn.Embed(self.vocab_size, self.embed_dim,
                               embedding_init=_normal(1.0, ('vocab', 'embed')), **d)
        block = dict(num_heads=self.num_heads, head_dim=self.resolved_head_dim,
                     embed_dim=self.embed_dim, mlp_dim=self.mlp_dim,
                     feed_forward=self.feed_forward, dropout=self.dropout,
                     norm_eps=self.norm_eps, **d)
        stack = dict(block=block, num_buckets=self.relative_buckets,
                     max_distance=self.relative_max_distance, scan_layers=self.scan_layers)
        self.encoder = Stack(self.num_layers, False, **stack)
        self.decoder = Stack(self.resolved_decoder_layers, True, **stack)
        if not self.tie_embeddings:
            self.lm_head = Linear((self.vocab_size,), ('embed', 'vocab'),
                                  init_std=self.embed_dim ** -0.5, **d)

    def _head(self, h):
        """Final decoder states [b, t, E] -> logits [b, t, vocab]."""
        rescale = self.tie_embeddings if self.rescale_head is None else self.rescale_head
        if rescale:
            h = h * self.embed_dim ** -0.5
        logits = self.shared.attend(h) if self.tie_embeddings else self.lm_head(h)
        return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

    def encode(self, enc_tokens, enc_mask, *, train: bool = False):
        """enc_tokens int32 [b, S], enc_mask [b, S] -> the encoder output [b, S, E]."""
        return self.encoder(_constrain(self.shared(enc_tokens)), enc_mask, train=train)

    def __call__(self, enc_tokens, enc_mask, dec_inputs, dec_mask=None, *, train: bool = False):
        """-> logits [b, T, vocab] (teacher forcing: dec_inputs are the shifted targets)."""
        enc = self.encode(enc_tokens, enc_mask, train=train)
        h = self.decoder(_constrain(self.shared(dec_inputs)), dec_mask, enc, enc_mask,
                         train=train)
        return self._head(h)

    def start_decoding(self, enc_tokens, enc_mask, max_len: int):
        """Encodes the prompts once -> a cache (see `init_cache`) with every decoder layer's
        cross-attention K/V of the encoder output and an empty self-attention cache of
        `max_len` slots."""
        enc = self.encode(enc_tokens, enc_mask)
        cross_k, cross_v = self.decoder.cross_kv(enc)
        cache = init_cache(self, enc_tokens.shape[0], max_len, enc_tokens.shape[1])
        return dict(cache, cross_k=cross_k.astype(cache['cross_k'].dtype),
                    cross_v=cross_v.astype(cache['cross_v'].dtype), enc_mask=enc_mask > 0)

    def decode_step(self, tokens, cache):
        """tokens int32 [b, t] at decoder positions index .. index + t - 1 -> (logits
        [b, t, vocab], cache with the t new self-attention entries). Inference only."""
        h, (k, v) = self.decoder.decode(_constrain(self.shared(tokens)), cache)
        return self._head(h), dict(cache, k=k, v=v, index=cache['index'] + tokens.shape[1])


def init_cache(model: Model, batch: int, max_len: int, enc_len: int):
    """An empty decoding cache (a pytree; `Model.start_decoding` fills the cross K/V):

        k, v              [dec_layers, batch, max_len, heads, head_dim] self-attention
        cross_k, cross_v  [dec_layers, batch, enc_len, heads, head_dim] of the encoder output
        enc_mask          bool [batch, enc_len] (the real prompt tokens)
        index             int32 scalar, the next decoder position / slot
    """
    dtype = _dtype('dtype', model.dtype)
    layers, h, d = model.resolved_decoder_layers, model.num_heads, model.resolved_head_dim
    zeros = lambda n: jnp.zeros((layers, batch, n, h, d), dtype)
    return dict(k=zeros(max_len), v=zeros(max_len), cross_k=zeros(enc_len),
                cross_v=zeros(enc_len), enc_mask=jnp.zeros((batch, enc_len), bool),
                index=jnp.zeros((), jnp.int32))


# ------------------------------------------------------------------- Generation

def decoding_form(model, params):
    """(model, params) as the decoding loop runs them: LoRA adapters merged, and scanned
    layers (`encoder/layers/...` stacked) unrolled into `layers_<i>`: the same function."""
    from jaxbig import generate as gen

    model, params = gen.decoding_form(model, params)
    if not model.scan_layers:
        return model, params
    params = dict(params)
    for name, n in (('encoder', model.num_layers), ('decoder', model.resolved_decoder_layers)):
        stack = dict(params[name])
        stacked = stack.pop('layers')
        for i in range(n):
            stack[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
        params[name] = stack
    return model.clone(scan_layers=False), params


def right_pad(prompts, pad_id: int = 0):
    """Token id arrays of different lengths -> (tokens int32 [b, S], mask int32 [b, S]),
    right-padded with `pad_id` to the longest (padding changes no output)."""
    if not len(prompts) or min(len(p) for p in prompts) == 0:
        raise ValueError('every prompt needs at least one token')
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)], mask[i, :len(p)] = p, 1
    return tokens, mask


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'eos_id', 'temperature',
                                             'top_k', 'top_p'))
def _generate(params, enc_tokens, enc_mask, rng, *, model, max_new_tokens, eos_id,
              temperature, top_k, top_p):
    """-> (tokens int32 [b, max_new_tokens], lengths int32 [b]); after a row's eos: eos_id."""
    from jaxbig import quantize
    from jaxbig.generate import sample_logits

    apply = functools.partial(model.apply, {'params': quantize.dequantize(params)})
    cache = apply(enc_tokens, enc_mask, max_new_tokens, method='start_decoding')
    batch = enc_tokens.shape[0]
    fill = 0 if eos_id is None else eos_id
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)

    def cond(carry):
        i, _, _, _, _, done = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, cache, out, lengths, done = carry
        logits, cache = apply(token[:, None], cache, method='decode_step')
        token = jnp.where(done, fill, sample(logits[:, 0], jax.random.fold_in(rng, i)))
        out = out.at[:, i].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        finished = token == eos_id if eos_id is not None else jnp.zeros_like(done)
        return i + 1, token, cache, out, lengths, done | finished

    start = jnp.full((batch,), model.decoder_start_id, jnp.int32)
    carry = (jnp.int32(0), start, cache, jnp.full((batch, max_new_tokens), fill, jnp.int32),
             jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
    _, _, _, out, lengths, _ = jax.lax.while_loop(cond, body, carry)
    return out, lengths


def generate(model, params, prompts, *, max_new_tokens: int, eos_id=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0):
    """Responses to `prompts` (encoder token id arrays, any lengths; right-padded here).

    The decoder starts from `model.decoder_start_id`; each step feeds the last token
    through `decode_step` (the cache: self-attention K/V, the cross K/V computed once) and
    draws the next with `jaxbig.generate.sample_logits` (temperature 0 = greedy, the
    default; top_k, top_p, seed as there). Returns (tokens int32 [b, max_new_tokens],
    lengths [b]): row b's response is tokens[b, :lengths[b]], its eos included.
    """
    tokens, mask = right_pad([np.asarray(p) for p in prompts])
    model, params = decoding_form(model, params)
    out, lengths = _generate(params, jnp.asarray(tokens), jnp.asarray(mask),
                             jax.random.key(seed), model=model,
                             max_new_tokens=int(max_new_tokens), eos_id=eos_id,
                             temperature=float(temperature), top_k=int(top_k),
                             top_p=float(top_p))
    return np.asarray(out), np.asarray(lengths)
