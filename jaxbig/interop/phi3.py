"""Phi3ForCausalLM <-> jaxbig's GPT: Llama's layout with q/k/v fused into one qkv_proj
([q heads; kv heads; kv heads] x head_dim rows) and gate/up into one gate_up_proj, and a
sliding window on every layer when config.json sets one. 'longrope' (Phi-3 128k) is
refused by the RoPE reader; a model that is also a Llama / Mistral exports as those unless
`jaxbig export --as phi3`. See jaxbig.interop.family."""

from __future__ import annotations

import numpy as np

from jaxbig.interop.family import Family, c, mismatches, no_gemma_switches
from jaxbig.interop.llama import decoder_fields, decoder_hf, llama_tensors, window_of


def _model(hf: dict) -> dict:
    return dict(decoder_fields(hf), sliding_window=window_of(hf, 'phi3'))


def _hf(m) -> dict:
    return dict(decoder_hf(m, 'phi3', 'Phi3ForCausalLM'), sliding_window=m.sliding_window or None,
                pad_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0)


def _tensors(m) -> dict:
    e, h, kv, d, f = (m.embed_dim, m.num_heads, m.resolved_kv_heads, m.resolved_head_dim,
                      m.mlp_dim)
    p = 'model.layers.{i}.'
    out = {k: v for k, v in llama_tensors(m).items()
           if not k.endswith(('q_proj.weight', 'k_proj.weight', 'v_proj.weight',
                              'gate_proj.weight', 'up_proj.weight'))}
    bounds = np.cumsum([h * d, kv * d])

    def split_qkv(w):  # [(h + 2 kv) d, e] -> q [e, h, d], k, v [e, kv, d]
        return tuple(c(part.T).reshape(e, -1, d) for part in np.split(w, bounds))

    def join_qkv(q, k, v):
        return c(np.concatenate([x.reshape(e, -1) for x in (q, k, v)], axis=1).T)

    out[p + 'self_attn.qkv_proj.weight'] = (
        ('attn/query/kernel', 'attn/key/kernel', 'attn/value/kernel'), split_qkv, join_qkv)
    out[p + 'mlp.gate_up_proj.weight'] = (
        ('mlp/gate/kernel', 'mlp/up/kernel'), lambda w: (c(w[:f].T), c(w[f:].T)),
        lambda gate, up: c(np.concatenate([gate, up], axis=1).T))
    return out


def _reasons(m) -> list[str]:
    return no_gemma_switches(m) + mismatches(
        m, norm='rmsnorm', mlp='swiglu', positions='rope', norm_position='pre',
        parallel_residual=False, embed_scale=False, rope_fraction=1.0,
        qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm='none')


PHI3 = Family('phi3', ('Phi3ForCausalLM',), _model, _hf, _tensors, _reasons,
              ignored=('.rotary_emb.inv_freq',))
