"""GPTNeoXForCausalLM (Pythia, GPT-NeoX-20B) <-> jaxbig's GPT: layernorm with biases,
biases everywhere, a plain gelu MLP, parallel residual (x + attn(ln1(x)) + mlp(ln2(x)),
use_parallel_residual) or sequential, RoPE on a leading fraction of each head
(rotary_pct / partial_rotary_factor, default 0.25), an untied head (embed_out).
query_key_value interleaves per head: rows [head][q | k | v][head_dim].
See jaxbig.interop.family."""

from __future__ import annotations

import numpy as np

from jaxbig.interop.family import Family, c, ident, mismatches, need, no_gemma_switches, same
from jaxbig.interop.llama import rope_fields, rope_hf

_GELUS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_fast': 'gelu',
          'gelu_pytorch_tanh': 'gelu'}


def _model(hf: dict) -> dict:
    act = hf.get('hidden_act', 'gelu')
    need(hf, 'hidden_act', act in _GELUS, f'expected one of {sorted(_GELUS)}')
    legacy = dict(hf)  # 4.x / original checkpoints: rotary_pct, rotary_emb_base
    legacy.setdefault('partial_rotary_factor', hf.get('rotary_pct', 0.25))
    legacy.setdefault('rope_theta', hf.get('rotary_emb_base', 10000.0))
    heads, embed = hf['num_attention_heads'], hf['hidden_size']
    bias = hf.get('attention_bias', True)
    return dict(name='gpt', vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
                num_heads=heads, embed_dim=embed, mlp_dim=hf['intermediate_size'], head_dim=0,
                norm='layernorm', mlp=_GELUS[act], positions='rope', max_len=0,
                **rope_fields(legacy, partial_ok=True), num_kv_heads=heads, qkv_bias=bias,
                out_bias=bias, mlp_bias=True, norm_eps=hf.get('layer_norm_eps', 1e-5),
                tie_embeddings=hf.get('tie_word_embeddings', False),
                parallel_residual=hf.get('use_parallel_residual', True))


def _hf(m) -> dict:
    return dict(architectures=['GPTNeoXForCausalLM'], model_type='gpt_neox',
                vocab_size=m.vocab_size, hidden_size=m.embed_dim, num_hidden_layers=m.num_layers,
                num_attention_heads=m.num_heads, intermediate_size=m.mlp_dim,
                hidden_act='gelu' if m.mlp == 'gelu_exact' else 'gelu_new',
                rope_parameters=dict(rope_hf(m), partial_rotary_factor=m.rope_fraction),
                max_position_embeddings=4096, layer_norm_eps=m.norm_eps,
                use_parallel_residual=m.parallel_residual, attention_bias=m.qkv_bias,
                tie_word_embeddings=m.tie_embeddings, attention_dropout=0.0, hidden_dropout=0.0)


def _tensors(m) -> dict:
    e, h, d = m.embed_dim, m.num_heads, m.resolved_head_dim
    p = 'gpt_neox.layers.{i}.'
    qkv = ('attn/query/{}', 'attn/key/{}', 'attn/value/{}')

    def split_w(w):  # [h * 3 * d, e] -> q, k, v [e, h, d]
        w = w.reshape(h, 3, d, e)
        return tuple(c(w[:, j].transpose(2, 0, 1)) for j in range(3))

    def join_w(*kernels):  # q, k, v [e, h, d] -> [h * 3 * d, e]
        return c(np.stack([k.transpose(1, 2, 0) for k in kernels], axis=1).reshape(-1, e))

    out = {
        p + 'attention.query_key_value.weight': (tuple(s.format('kernel') for s in qkv),
                                                 split_w, join_w),
        p + 'attention.dense.weight': (('attn/out/kernel',),
                                       lambda w: (c(w.T).reshape(h, d, e),),
                                       lambda k: c(k.reshape(h * d, e).T)),
        p + 'mlp.dense_h_to_4h.weight': (('mlp/up/kernel',), lambda w: (c(w.T),), lambda k: c(k.T)),
        p + 'mlp.dense_4h_to_h.weight': (('mlp/down/kernel',), lambda w: (c(w.T),),
                                         lambda k: c(k.T)),
        'gpt_neox.embed_in.weight': (('embed/embedding',), same, ident),
    }
    if m.qkv_bias:
        out[p + 'attention.query_key_value.bias'] = (
            tuple(s.format('bias') for s in qkv),
            lambda b: tuple(c(x) for x in b.reshape(h, 3, d).transpose(1, 0, 2)),
            lambda *bs: c(np.stack(bs, axis=1).reshape(-1)))
        out[p + 'attention.dense.bias'] = (('attn/out/bias',), same, ident)
    for hf_name, path in (('mlp.dense_h_to_4h.bias', 'mlp/up/bias'),
                          ('mlp.dense_4h_to_h.bias', 'mlp/down/bias'),
                          ('input_layernorm.weight', 'attn_norm/scale'),
                          ('input_layernorm.bias', 'attn_norm/bias'),
                          ('post_attention_layernorm.weight', 'mlp_norm/scale'),
                          ('post_attention_layernorm.bias', 'mlp_norm/bias')):
        out[p + hf_name] = ((path,), same, ident)
    out['gpt_neox.final_layer_norm.weight'] = (('final_norm/scale',), same, ident)
    out['gpt_neox.final_layer_norm.bias'] = (('final_norm/bias',), same, ident)
    if not m.tie_embeddings:
        out['embed_out.weight'] = (('unembed/kernel',), lambda w: (c(w.T),), lambda k: c(k.T))
    return out


def _reasons(m) -> list[str]:
    bad = mismatches(m, norm='layernorm', positions='rope', norm_position='pre',
                     embed_scale=False, mlp_bias=True, qk_norm='none', sliding_window=0,
                     rope_scaling='default')
    bad += [f'mlp={m.mlp!r}'] if m.mlp not in ('gelu', 'gelu_exact') else []
    bad += no_gemma_switches(m)
    bad += ['out_bias != qkv_bias'] if m.out_bias != m.qkv_bias else []
    bad += [f'num_kv_heads={m.num_kv_heads}'] if m.resolved_kv_heads != m.num_heads else []
    bad += [f'head_dim={m.head_dim}'] if m.resolved_head_dim * m.num_heads != m.embed_dim else []
    return bad


GPT_NEOX = Family('gpt_neox', ('GPTNeoXForCausalLM',), _model, _hf, _tensors, _reasons,
                  ignored=('.attention.bias', '.attention.masked_bias', '.rotary_emb.inv_freq'))
