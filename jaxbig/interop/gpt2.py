"""GPT2LMHeadModel <-> jaxbig's GPT: layernorm, gelu, learned positions, biases everywhere,
a tied head; GPT-2's Conv1D weights are [in, out]. See jaxbig.interop.family."""

from __future__ import annotations

import numpy as np

from jaxbig.interop.family import Family, c, mismatches, need, no_gemma_switches

_GELUS = {'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu', 'gelu_fast': 'gelu',
          'gelu': 'gelu_exact'}


def _gpt2_model(hf: dict) -> dict:
    act = hf.get('activation_function', 'gelu_new')
    need(hf, 'activation_function', act in _GELUS, f'expected one of {sorted(_GELUS)}')
    for field in ('scale_attn_by_inverse_layer_idx', 'add_cross_attention'):
        need(hf, field, not hf.get(field, False), 'expected false')
    need(hf, 'scale_attn_weights', hf.get('scale_attn_weights', True), 'expected true')
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
    split_w = lambda w: tuple(c(w[:, j * e:(j + 1) * e]).reshape(e, h, d) for j in range(3))
    split_b = lambda b: tuple(c(b[j * e:(j + 1) * e]).reshape(h, d) for j in range(3))
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
        out['lm_head.weight'] = (('unembed/kernel',), lambda w: (c(w.T),), lambda k: c(k.T))
    return out


def _is_gpt2(m) -> list[str]:
    """The fields of a jaxbig GPT that keep it from being a GPT-2 (empty: it is one)."""
    bad = mismatches(m, norm='layernorm', positions='learned', qkv_bias=True, out_bias=True,
                     mlp_bias=True, tie_embeddings=True, sliding_window=0, qk_norm='none',
                     norm_position='pre', parallel_residual=False, embed_scale=False)
    bad += no_gemma_switches(m)
    bad += [f'mlp={m.mlp!r}'] if m.mlp not in ('gelu', 'gelu_exact') else []
    bad += [f'num_kv_heads={m.num_kv_heads}'] if m.resolved_kv_heads != m.num_heads else []
    bad += [f'head_dim={m.head_dim}'] if m.resolved_head_dim * m.num_heads != m.embed_dim else []
    return bad


GPT2 = Family('gpt2', ('GPT2LMHeadModel',), _gpt2_model, _gpt2_hf, _gpt2_tensors, _is_gpt2,
              ignored=('.attn.bias', '.attn.masked_bias'))
