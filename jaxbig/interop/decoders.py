"""Hugging Face decoder families <-> jaxbig's GPT (`jaxbig.models.gpt`): config fields and
tensor names, both ways.

    GPT2LMHeadModel                                  layernorm, gelu, learned positions,
                                                     biases everywhere, tied head
    LlamaForCausalLM, MistralForCausalLM,            rmsnorm, swiglu, rope (rope_theta),
    Qwen2ForCausalLM                                 grouped-query attention, optional
                                                     biases (Qwen2: q/k/v only), tied or not

A family gives `model_config(hf) -> jaxbig model section` (ConfigError naming the field and
value it cannot represent), `hf_config(model) -> config.json fields`, and `tensors(model)`:
{hf name template: (jaxbig paths, to_jaxbig, to_hf)}. Templates hold '{i}' for per-layer
tensors; jaxbig paths are relative to a layer (`attn/query/kernel`) for those and absolute
(`embed/embedding`) otherwise. `to_jaxbig(hf tensor) -> tuple of jaxbig arrays` (one per
path); `to_hf(*jaxbig arrays) -> hf tensor`. HF Linear weights are [out, in] (GPT-2's
Conv1D: [in, out]); jaxbig kernels are [in..., out...].
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxbig.config import ConfigError


def _c(x):
    return np.ascontiguousarray(x)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    model_config: Callable
    hf_config: Callable
    tensors: Callable
    ignored: tuple[str, ...] = ()  # suffixes of stored buffers that carry no weights


def _need(hf: dict, field: str, ok: bool, why: str):
    if not ok:
        raise ConfigError(f'config.json: {field}={hf.get(field)!r} is not representable in '
                          f"jaxbig's GPT ({why})")


# ----------------------------------------------------------------------------- GPT-2

_GELUS = {'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu', 'gelu_fast': 'gelu',
          'gelu': 'gelu_exact'}


def _gpt2_model(hf: dict) -> dict:
    act = hf.get('activation_function', 'gelu_new')
    _need(hf, 'activation_function', act in _GELUS, f'expected one of {sorted(_GELUS)}')
    for field in ('scale_attn_by_inverse_layer_idx', 'add_cross_attention'):
        _need(hf, field, not hf.get(field, False), 'expected false')
    _need(hf, 'scale_attn_weights', hf.get('scale_attn_weights', True), 'expected true')
    embed = hf['n_embd']
    return dict(name='gpt', vocab_size=hf['vocab_size'], num_layers=hf['n_layer'],
                num_heads=hf['n_head'], embed_dim=embed, mlp_dim=hf.get('n_inner') or 4 * embed,
                head_dim=0, norm='layernorm', mlp=_GELUS[act], positions='learned',
                max_len=hf['n_positions'], num_kv_heads=0, qkv_bias=True, out_bias=True,
                mlp_bias=True, norm_eps=hf.get('layer_norm_epsilon', 1e-5),
                tie_embeddings=hf.get('tie_word_embeddings', True))


def _gpt2_hf(m) -> dict:
    return dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', vocab_size=m.vocab_size,
                n_layer=m.num_layers, n_head=m.num_heads, n_embd=m.embed_dim,
                n_inner=m.mlp_dim, n_positions=m.max_len, layer_norm_epsilon=m.norm_eps,
                activation_function='gelu_new' if m.mlp == 'gelu' else 'gelu',
                tie_word_embeddings=m.tie_embeddings, attn_pdrop=0.0, embd_pdrop=0.0,
                resid_pdrop=0.0)


def _gpt2_tensors(m) -> dict:
    e, h, d = m.embed_dim, m.num_heads, m.resolved_head_dim
    p = 'transformer.h.{i}.'
    split_w = lambda w: tuple(_c(w[:, j * e:(j + 1) * e]).reshape(e, h, d) for j in range(3))
    split_b = lambda b: tuple(_c(b[j * e:(j + 1) * e]).reshape(h, d) for j in range(3))
    qkv = ('attn/query/{}', 'attn/key/{}', 'attn/value/{}')
    out = {
        p + 'attn.c_attn.weight': (tuple(s.format('kernel') for s in qkv), split_w,
                                   lambda q, k, v: np.concatenate(
                                       [x.reshape(e, e) for x in (q, k, v)], axis=1)),
        p + 'attn.c_attn.bias': (tuple(s.format('bias') for s in qkv), split_b,
                                 lambda q, k, v: np.concatenate([x.reshape(e) for x in (q, k, v)])),
        p + 'attn.c_proj.weight': (('attn/out/kernel',), lambda w: (w.reshape(h, d, e),),
                                   lambda k: k.reshape(h * d, e)),
        p + 'mlp.c_fc.weight': (('mlp/up/kernel',), lambda w: (w,), lambda k: k),
        p + 'mlp.c_proj.weight': (('mlp/down/kernel',), lambda w: (w,), lambda k: k),
        'transformer.wte.weight': (('embed/embedding',), lambda w: (w,), lambda x: x),
        'transformer.wpe.weight': (('pos_embed/embedding',), lambda w: (w,), lambda x: x),
    }
    same = lambda x: (x,)
    for hf_name, path in (('attn.c_proj.bias', 'attn/out/bias'), ('mlp.c_fc.bias', 'mlp/up/bias'),
                          ('mlp.c_proj.bias', 'mlp/down/bias'), ('ln_1.weight', 'attn_norm/scale'),
                          ('ln_1.bias', 'attn_norm/bias'), ('ln_2.weight', 'mlp_norm/scale'),
                          ('ln_2.bias', 'mlp_norm/bias')):
        out[p + hf_name] = ((path,), same, lambda x: x)
    out['transformer.ln_f.weight'] = (('final_norm/scale',), same, lambda x: x)
    out['transformer.ln_f.bias'] = (('final_norm/bias',), same, lambda x: x)
    if not m.tie_embeddings:
        out['lm_head.weight'] = (('unembed/kernel',), lambda w: (_c(w.T),), lambda k: _c(k.T))
    return out


def _is_gpt2(m) -> list[str]:
    """The fields of a jaxbig GPT that keep it from being a GPT-2 (empty: it is one)."""
    want = dict(norm='layernorm', positions='learned', qkv_bias=True, out_bias=True,
                mlp_bias=True, tie_embeddings=True)
    bad = [f'{k}={getattr(m, k)!r}' for k, v in want.items() if getattr(m, k) != v]
    bad += [f'mlp={m.mlp!r}'] if m.mlp not in ('gelu', 'gelu_exact') else []
    bad += [f'num_kv_heads={m.num_kv_heads}'] if m.resolved_kv_heads != m.num_heads else []
    bad += [f'head_dim={m.head_dim}'] if m.resolved_head_dim * m.num_heads != m.embed_dim else []
    return bad


GPT2 = Family('gpt2', ('GPT2LMHeadModel',), _gpt2_model, _gpt2_hf, _gpt2_tensors,
              ignored=('.attn.bias', '.attn.masked_bias'))


# ----------------------------------------------------------------------------- Llama family

def _rope_theta(hf: dict) -> float:
    """rope_theta from transformers 5's rope_parameters or 4.x's rope_theta/rope_scaling."""
    params = hf.get('rope_parameters') or {}
    scaling = hf.get('rope_scaling') or {}
    kind = params.get('rope_type', scaling.get('rope_type', scaling.get('type', 'default')))
    field = 'rope_parameters' if params else 'rope_scaling'
    _need(hf, field, kind == 'default', f"rope_type {kind!r}: only 'default' rotary positions")
    return float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))


def _llama_model(hf: dict) -> dict:
    kind = hf.get('model_type', 'llama')
    _need(hf, 'hidden_act', hf.get('hidden_act', 'silu') == 'silu', "expected 'silu'")
    _need(hf, 'pretraining_tp', hf.get('pretraining_tp', 1) == 1, 'expected 1')
    window = hf.get('sliding_window')
    if kind == 'qwen2':
        _need(hf, 'use_sliding_window', not hf.get('use_sliding_window', False), 'expected false')
    elif window is not None:
        _need(hf, 'sliding_window', window >= hf.get('max_position_embeddings', 0),
              'a window shorter than max_position_embeddings; use null')
    heads, embed = hf['num_attention_heads'], hf['hidden_size']
    head_dim = hf.get('head_dim') or embed // heads
    attn_bias = hf.get('attention_bias', False)
    return dict(name='gpt', vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
                num_heads=heads, embed_dim=embed, mlp_dim=hf['intermediate_size'],
                head_dim=0 if head_dim * heads == embed else head_dim, norm='rmsnorm',
                mlp='swiglu', positions='rope', max_len=0, rope_base=_rope_theta(hf),
                num_kv_heads=hf.get('num_key_value_heads') or heads,
                qkv_bias=True if kind == 'qwen2' else attn_bias,
                out_bias=False if kind == 'qwen2' else attn_bias,
                mlp_bias=hf.get('mlp_bias', False), norm_eps=hf.get('rms_norm_eps', 1e-6),
                tie_embeddings=hf.get('tie_word_embeddings', False))


def _llama_kind(m) -> str:
    return 'qwen2' if m.qkv_bias and not m.out_bias else 'llama'


def _llama_hf(m) -> dict:
    kind = _llama_kind(m)
    out = dict(architectures=['Qwen2ForCausalLM' if kind == 'qwen2' else 'LlamaForCausalLM'],
               model_type=kind, vocab_size=m.vocab_size, num_hidden_layers=m.num_layers,
               num_attention_heads=m.num_heads, num_key_value_heads=m.resolved_kv_heads,
               hidden_size=m.embed_dim, intermediate_size=m.mlp_dim,
               head_dim=m.resolved_head_dim, hidden_act='silu', rms_norm_eps=m.norm_eps,
               rope_theta=m.rope_base, rope_parameters=dict(rope_type='default',
                                                            rope_theta=m.rope_base),
               max_position_embeddings=max(m.max_len, 4096),
               tie_word_embeddings=m.tie_embeddings, attention_dropout=0.0)
    if kind == 'llama':
        out.update(attention_bias=m.qkv_bias, mlp_bias=m.mlp_bias)
    else:
        out.update(use_sliding_window=False)
    return out


def _llama_tensors(m) -> dict:
    e, h, kv, d = m.embed_dim, m.num_heads, m.resolved_kv_heads, m.resolved_head_dim
    p = 'model.layers.{i}.'
    proj = lambda n: ((lambda w: (_c(w.T).reshape(e, n, d),)), lambda k: _c(k.reshape(e, n * d).T))
    out = {}
    for name, path, n in (('q_proj', 'attn/query', h), ('k_proj', 'attn/key', kv),
                          ('v_proj', 'attn/value', kv)):
        out[f'{p}self_attn.{name}.weight'] = ((f'{path}/kernel',), *proj(n))
        if m.qkv_bias:
            out[f'{p}self_attn.{name}.bias'] = ((f'{path}/bias',), lambda b, n=n: (b.reshape(n, d),),
                                                lambda b: b.reshape(-1))
    out[p + 'self_attn.o_proj.weight'] = (('attn/out/kernel',), lambda w: (_c(w.T).reshape(h, d, e),),
                                          lambda k: _c(k.reshape(h * d, e).T))
    same = lambda x: (x,)
    if m.out_bias:
        out[p + 'self_attn.o_proj.bias'] = (('attn/out/bias',), same, lambda x: x)
    for name in ('gate', 'up', 'down'):
        out[f'{p}mlp.{name}_proj.weight'] = ((f'mlp/{name}/kernel',), lambda w: (_c(w.T),),
                                             lambda k: _c(k.T))
        if m.mlp_bias:
            out[f'{p}mlp.{name}_proj.bias'] = ((f'mlp/{name}/bias',), same, lambda x: x)
    out[p + 'input_layernorm.weight'] = (('attn_norm/scale',), same, lambda x: x)
    out[p + 'post_attention_layernorm.weight'] = (('mlp_norm/scale',), same, lambda x: x)
    out['model.embed_tokens.weight'] = (('embed/embedding',), same, lambda x: x)
    out['model.norm.weight'] = (('final_norm/scale',), same, lambda x: x)
    if not m.tie_embeddings:
        out['lm_head.weight'] = (('unembed/kernel',), lambda w: (_c(w.T),), lambda k: _c(k.T))
    return out


def _is_llama(m) -> list[str]:
    want = dict(norm='rmsnorm', mlp='swiglu', positions='rope')
    bad = [f'{k}={getattr(m, k)!r}' for k, v in want.items() if getattr(m, k) != v]
    if m.out_bias and not m.qkv_bias:
        bad.append('out_bias=True with qkv_bias=False')
    return bad


LLAMA = Family('llama', ('LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'),
               _llama_model, _llama_hf, _llama_tensors, ignored=('.rotary_emb.inv_freq',))

FAMILIES = (GPT2, LLAMA)


def family_of(hf: dict) -> Family:
    """The family of a Hugging Face config.json, by its `architectures` entry."""
    arch = (hf.get('architectures') or [''])[0]
    for family in FAMILIES:
        if arch in family.architectures:
            return family
    supported = [a for f in FAMILIES for a in f.architectures]
    raise ConfigError(f'config.json: architecture {arch!r} is not supported '
                      f'(supported: {", ".join(supported)})')


def family_for(model, want: str = '') -> Family:
    """The family a jaxbig GPT exports as (`want` = 'gpt2' | 'llama' | '' for either)."""
    reasons = {'gpt2': _is_gpt2(model), 'llama': _is_llama(model)}
    for family in FAMILIES:
        if (not want or want == family.name) and not reasons[family.name]:
            return family
    names = [want] if want else list(reasons)
    if want and want not in reasons:
        raise ConfigError(f'--as {want!r}: expected one of {list(reasons)}')
    raise ConfigError('this GPT matches no exportable family: ' + '; '.join(
        f'{n} needs other {", ".join(reasons[n])}' for n in names))
