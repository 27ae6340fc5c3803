"""GemmaForCausalLM, Gemma2ForCausalLM and Gemma3ForCausalLM (text) <-> jaxbig's GPT.

All three: Llama's tensor names, RMSNorm of the 1 + w parameterisation
(norm='rmsnorm_plus_one': the stored w is jaxbig's scale), GeGLU (tanh-approximated gelu
gate), embeddings times sqrt(hidden_size), a tied head unless config.json unties it.
Gemma 2 adds norms after each sublayer as well as before (norm_position='both':
pre_feedforward_layernorm is jaxbig's mlp_norm), attention logits scaled by
query_pre_attn_scalar**-0.5 and soft-capped (attn_logit_softcapping, default 50), output
logits soft-capped (final_logit_softcapping, default 30), and sliding-window layers
alternating with global ones (layer_types -> window_pattern 'LG'). Gemma 3 (text) adds
per-head q/k norms (1 + w too), five local layers to one global ('LLLLLG'), and a RoPE of
its own for the local layers (rope_parameters['sliding_attention'] -> rope_local_base);
no soft-capping unless config.json sets it. The defaults are transformers' for each kind.
See jaxbig.interop.family.
"""

from __future__ import annotations

from jaxbig.interop.family import Family, ident, mismatches, need, same
from jaxbig.interop.llama import decoder_fields, decoder_hf, llama_tensors, rope_hf

_ACT = 'gelu_pytorch_tanh'
_KINDS = {'gemma': 'GemmaForCausalLM', 'gemma2': 'Gemma2ForCausalLM',
          'gemma3_text': 'Gemma3ForCausalLM'}
# transformers' defaults for what a config.json may leave out: (attention softcap, output
# softcap, local / global period, global rope_theta)
_DEFAULTS = {'gemma2': (50.0, 30.0, 2, 10000.0), 'gemma3_text': (None, None, 6, 1e6)}


def _pattern(hf: dict, period: int) -> str:
    """window_pattern for config.json's layer_types (or transformers' default of `period`):
    the shortest repeating string of L (sliding_attention) / G (full_attention)."""
    layers = hf['num_hidden_layers']
    types = hf.get('layer_types') or [
        'sliding_attention' if (i + 1) % hf.get('sliding_window_pattern', period) else
        'full_attention' for i in range(layers)]
    need(hf, 'layer_types', set(types) <= {'sliding_attention', 'full_attention'},
         'expected sliding_attention / full_attention')
    kinds = ''.join('L' if t == 'sliding_attention' else 'G' for t in types)
    for p in range(1, layers + 1):
        if all(kinds[i] == kinds[i % p] for i in range(layers)):
            return kinds[:p]
    return kinds


def _rope_config(hf: dict, kind: str) -> tuple[dict, float]:
    """(config.json with the global layers' RoPE where decoder_fields reads it, the local
    layers' base or 0). Gemma 3 nests rope_parameters by layer type (4.x: rope_theta,
    rope_scaling for the global layers and rope_local_base_freq)."""
    if kind != 'gemma3_text':
        return dict(hf, rope_theta=hf.get('rope_theta', 10000.0)), 0.0
    params = hf.get('rope_parameters') or {}
    full = dict(params.get('full_attention') or hf.get('rope_scaling') or {})
    full.setdefault('rope_theta', hf.get('rope_theta', _DEFAULTS[kind][3]))
    local = params.get('sliding_attention') or {}
    need(hf, 'rope_parameters', local.get('rope_type', 'default') == 'default',
         'the sliding layers\' RoPE must be unscaled')
    local_base = float(local.get('rope_theta', hf.get('rope_local_base_freq', 10000.0)))
    return dict(hf, rope_parameters=full, rope_scaling=None), local_base


def _model(hf: dict) -> dict:
    kind = hf.get('model_type', 'gemma')
    need(hf, 'model_type', kind in _KINDS, f'expected one of {sorted(_KINDS)}')
    need(hf, 'use_bidirectional_attention', not hf.get('use_bidirectional_attention'),
         'expected false: a causal decoder')
    need(hf, 'attention_bias', not hf.get('attention_bias'), 'expected false')
    rope_config, local_base = _rope_config(hf, kind)
    fields = dict(decoder_fields(rope_config, acts=(_ACT, 'gelu_new', 'gelu_fast')),
                  norm='rmsnorm_plus_one', mlp='geglu', embed_scale=True,
                  tie_embeddings=hf.get('tie_word_embeddings', True))
    if kind == 'gemma':
        return fields
    attn_cap, logit_cap, period, _ = _DEFAULTS[kind]
    head_dim = fields['head_dim'] or fields['embed_dim'] // fields['num_heads']
    window = hf.get('sliding_window', 4096)
    pattern = _pattern(hf, period) if window else ''
    fields.update(norm_position='both',
                  attention_scale=float(hf.get('query_pre_attn_scalar', head_dim)) ** -0.5,
                  attn_softcap=float(hf.get('attn_logit_softcapping', attn_cap) or 0.0),
                  logit_softcap=float(hf.get('final_logit_softcapping', logit_cap) or 0.0),
                  sliding_window=int(window or 0),
                  window_pattern=pattern if 'G' in pattern else '')  # all local: no pattern
    if kind == 'gemma3_text':
        fields['qk_norm'] = 'head'
        if 'G' in pattern:
            fields['rope_local_base'] = local_base
        else:  # every layer slides: the local RoPE is the only one
            fields.update(rope_base=local_base, rope_scaling='default')
    return fields


def _kind(m) -> str:
    if m.norm_position != 'both':
        return 'gemma'
    return 'gemma3_text' if m.qk_norm == 'head' else 'gemma2'


def _hf(m) -> dict:
    kind = _kind(m)
    out = decoder_hf(m, kind, _KINDS[kind], act=_ACT)
    if kind == 'gemma':
        return out
    pattern = m.window_pattern or 'L'
    types = ['sliding_attention' if pattern[i % len(pattern)] == 'L' else 'full_attention'
             for i in range(m.num_layers)]
    out.update(query_pre_attn_scalar=round(m.attention_scale ** -2) if m.attention_scale
               else m.resolved_head_dim, attn_logit_softcapping=m.attn_softcap or None,
               final_logit_softcapping=m.logit_softcap or None,
               sliding_window=m.sliding_window or None,
               layer_types=types if m.sliding_window else ['full_attention'] * m.num_layers)
    if kind == 'gemma3_text':
        local = dict(rope_type='default', rope_theta=m.rope_local_base or m.rope_base)
        out.update(rope_parameters=dict(full_attention=rope_hf(m), sliding_attention=local))
        out.pop('rope_theta')
    return out


def _tensors(m) -> dict:
    out = llama_tensors(m)
    if _kind(m) != 'gemma':  # norms before and after each sublayer
        p = 'model.layers.{i}.'
        out[p + 'post_attention_layernorm.weight'] = (('post_attn_norm/scale',), same, ident)
        out[p + 'pre_feedforward_layernorm.weight'] = (('mlp_norm/scale',), same, ident)
        out[p + 'post_feedforward_layernorm.weight'] = (('post_mlp_norm/scale',), same, ident)
    return out


def _reasons(m) -> list[str]:
    bad = mismatches(m, norm='rmsnorm_plus_one', mlp='geglu', positions='rope',
                     parallel_residual=False, embed_scale=True, rope_fraction=1.0,
                     qkv_bias=False, out_bias=False, mlp_bias=False)
    bad += [f'norm_position={m.norm_position!r}'] if m.norm_position == 'post' else []
    if m.norm_position == 'pre':  # Gemma 1: none of the later generations' switches
        bad += mismatches(m, qk_norm='none', sliding_window=0, attention_scale=0.0,
                          attn_softcap=0.0, logit_softcap=0.0)
    else:
        bad += [f'qk_norm={m.qk_norm!r}'] if m.qk_norm == 'projection' else []
    return bad


GEMMA = Family('gemma', tuple(_KINDS.values()), _model, _hf, _tensors, _reasons,
               ignored=('.rotary_emb.inv_freq',))
