"""Olmo2ForCausalLM <-> jaxbig's GPT: Llama's projections with the norms after each
sublayer instead of before (norm_position='post': post_attention_layernorm,
post_feedforward_layernorm) and RMSNorm of q and k over the whole projection
(qk_norm='projection': stored [heads * head_dim], jaxbig's scale [heads, head_dim]).
See jaxbig.interop.family."""

from __future__ import annotations

from jaxbig.interop.family import Family, ident, mismatches, need, no_gemma_switches, same
from jaxbig.interop.llama import decoder_fields, decoder_hf, llama_tensors


def _model(hf: dict) -> dict:
    need(hf, 'attention_bias', not hf.get('attention_bias'), 'expected false')
    return dict(decoder_fields(hf), norm_position='post', qk_norm='projection')


def _hf(m) -> dict:
    return dict(decoder_hf(m, 'olmo2', 'Olmo2ForCausalLM'), attention_bias=False,
                pad_token_id=None)


def projection_norms(m) -> dict:
    """q_norm / k_norm over the whole projection (OLMo 2, OLMoE): [heads * head_dim] <->
    jaxbig's [heads, head_dim] scales."""
    h, kv, d = m.num_heads, m.resolved_kv_heads, m.resolved_head_dim
    return {f'model.layers.{{i}}.self_attn.{name}.weight': (
        (f'attn/{path}_norm/scale',), lambda w, n=n: (w.reshape(n, d),),
        lambda s: s.reshape(-1)) for name, path, n in (('q_norm', 'query', h),
                                                       ('k_norm', 'key', kv))}


def _tensors(m) -> dict:
    p = 'model.layers.{i}.'
    out = llama_tensors(m)
    del out[p + 'input_layernorm.weight']
    out[p + 'post_attention_layernorm.weight'] = (('post_attn_norm/scale',), same, ident)
    out[p + 'post_feedforward_layernorm.weight'] = (('post_mlp_norm/scale',), same, ident)
    return {**out, **projection_norms(m)}


def _reasons(m) -> list[str]:
    return no_gemma_switches(m) + mismatches(
        m, norm='rmsnorm', mlp='swiglu', positions='rope', norm_position='post',
        parallel_residual=False, embed_scale=False, rope_fraction=1.0,
        qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm='projection',
        sliding_window=0)


OLMO2 = Family('olmo2', ('Olmo2ForCausalLM',), _model, _hf, _tensors, _reasons,
               ignored=('.rotary_emb.inv_freq',))
