"""GemmaForCausalLM (Gemma 1) <-> jaxbig's GPT: Llama's tensor names, with RMSNorm of
the 1 + w parameterisation (norm='rmsnorm_plus_one': the stored w is jaxbig's scale),
GeGLU (tanh-approximated gelu gate), embeddings times sqrt(hidden_size), a tied head
unless config.json unties it.
See jaxbig.interop.family."""

from __future__ import annotations

from jaxbig.interop.family import Family, mismatches, need
from jaxbig.interop.llama import decoder_fields, decoder_hf, llama_tensors

_ACT = 'gelu_pytorch_tanh'


def _model(hf: dict) -> dict:
    need(hf, 'use_bidirectional_attention', not hf.get('use_bidirectional_attention'),
         'expected false: a causal decoder')
    need(hf, 'attention_bias', not hf.get('attention_bias'), 'expected false')
    fields = decoder_fields(hf, acts=(_ACT, 'gelu_new', 'gelu_fast'))  # tanh-approximated
    return dict(fields, norm='rmsnorm_plus_one', mlp='geglu', embed_scale=True,
                tie_embeddings=hf.get('tie_word_embeddings', True))


def _hf(m) -> dict:
    return decoder_hf(m, 'gemma', 'GemmaForCausalLM', act=_ACT)


def _reasons(m) -> list[str]:
    return mismatches(m, norm='rmsnorm_plus_one', mlp='geglu', positions='rope',
                      norm_position='pre', parallel_residual=False, embed_scale=True,
                      rope_fraction=1.0, qkv_bias=False, out_bias=False, mlp_bias=False,
                      qk_norm='none', sliding_window=0)


GEMMA = Family('gemma', ('GemmaForCausalLM',), _model, _hf, llama_tensors, _reasons,
               ignored=('.rotary_emb.inv_freq',))
