"""The Llama family <-> jaxbig's GPT: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM. rmsnorm, swiglu, RoPE (rope_theta and the scalings 'linear', 'llama3'
(Llama 3.x), 'yarn'), grouped-query attention, optional biases (Qwen2: q/k/v only), tied
or not; Mistral's sliding window, Qwen's when every layer slides; Qwen3's per-head q/k
RMSNorm. The RoPE and window readers and the tensor map are shared with the families
built on Llama's layout (gemma.py, phi3.py, olmo2.py). See jaxbig.interop.family.
"""

from __future__ import annotations

from jaxbig.interop.family import Family, c, ident, mismatches, need, no_gemma_switches, same

_ROPE_KEYS = {  # rope_type -> {HF key: (jaxbig field, required)}
    'default': {},
    'linear': {'factor': ('rope_factor', True)},
    'llama3': {'factor': ('rope_factor', True), 'low_freq_factor': ('rope_low_freq_factor', True),
               'high_freq_factor': ('rope_high_freq_factor', True)},
    'yarn': {'factor': ('rope_factor', False), 'beta_fast': ('rope_beta_fast', False),
             'beta_slow': ('rope_beta_slow', False),
             'attention_factor': ('rope_attention_factor', False)},
}


def rope_fields(hf: dict, partial_ok: bool = False) -> dict:
    """The model.rope_* fields of transformers 5's rope_parameters or 4.x's rope_theta and
    rope_scaling; a kind or key jaxbig does not compute is one ConfigError line."""
    params = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
    field = 'rope_parameters' if hf.get('rope_parameters') else 'rope_scaling'
    kind = params.get('rope_type', params.get('type', 'default'))
    need(hf, field, kind in _ROPE_KEYS, f'rope_type {kind!r}: jaxbig computes '
          f'{", ".join(map(repr, _ROPE_KEYS))}')
    partial = params.get('partial_rotary_factor', hf.get('partial_rotary_factor')) or 1.0
    need(hf, field, partial_ok or partial == 1, f'partial_rotary_factor={partial}: expected 1')
    out = dict(rope_base=float(params.get('rope_theta', hf.get('rope_theta', 10000.0))),
               rope_scaling=kind, rope_fraction=float(partial))
    for key, (name, required) in _ROPE_KEYS[kind].items():
        need(hf, field, not required or params.get(key) is not None, f'{kind} needs {key}')
        if params.get(key) is not None:
            out[name] = float(params[key])
    if kind in ('llama3', 'yarn'):  # transformers: the top-level field wins (Phi-3 keeps it there)
        out['rope_original_max_len'] = int(hf.get('original_max_position_embeddings')
                                           or params.get('original_max_position_embeddings')
                                           or hf['max_position_embeddings'])
    if kind == 'yarn':
        need(hf, field, not (params.get('mscale') and params.get('mscale_all_dim')),
              "mscale / mscale_all_dim (DeepSeek's YaRN attention factor)")
        need(hf, field, params.get('truncate', True), 'truncate=false')
        out.setdefault('rope_factor', hf['max_position_embeddings'] / out['rope_original_max_len'])
    return out


def window_of(hf: dict, kind: str) -> int:
    """The sliding window every layer uses (0: none). Qwen2 / Qwen3 slide the layers
    `layer_types` names (default: those from max_window_layers on) when use_sliding_window;
    Mistral and Phi-3 slide every layer whenever sliding_window is set; Llama never slides."""
    window = hf.get('sliding_window')
    if kind in ('mistral', 'phi3'):
        return int(window or 0)
    if kind not in ('qwen2', 'qwen3') or not hf.get('use_sliding_window') or window is None:
        return 0
    layers = hf['num_hidden_layers']
    types = hf.get('layer_types') or ['sliding_attention' if i >= hf.get('max_window_layers', 28)
                                      else 'full_attention' for i in range(layers)]
    sliding = {t == 'sliding_attention' for t in types}
    need(hf, 'layer_types' if hf.get('layer_types') else 'max_window_layers', len(sliding) == 1,
          'sliding and full attention mixed across layers')
    return int(window) if sliding == {True} else 0


def decoder_fields(hf: dict, acts: tuple[str, ...] = ('silu',)) -> dict:
    """The jaxbig GPT fields every Llama-layout config.json shares: shapes, RoPE, rmsnorm,
    a gated MLP (config.json's hidden_act one of `acts`, the first its default), no biases."""
    need(hf, 'hidden_act', hf.get('hidden_act', acts[0]) in acts,
         f'expected {" or ".join(map(repr, acts))}')
    need(hf, 'pretraining_tp', hf.get('pretraining_tp', 1) == 1, 'expected 1')
    heads, embed = hf['num_attention_heads'], hf['hidden_size']
    head_dim = hf.get('head_dim') or embed // heads
    return dict(name='gpt', vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
                num_heads=heads, embed_dim=embed, mlp_dim=hf['intermediate_size'],
                head_dim=0 if head_dim * heads == embed else head_dim, norm='rmsnorm',
                mlp='swiglu', positions='rope', max_len=0, **rope_fields(hf),
                num_kv_heads=hf.get('num_key_value_heads') or heads, qkv_bias=False,
                out_bias=False, mlp_bias=False, norm_eps=hf.get('rms_norm_eps', 1e-6),
                tie_embeddings=hf.get('tie_word_embeddings', False))


def _llama_model(hf: dict) -> dict:
    kind = hf.get('model_type', 'llama')
    attn_bias = hf.get('attention_bias', False)
    return dict(decoder_fields(hf), qkv_bias=True if kind == 'qwen2' else attn_bias,
                out_bias=False if kind == 'qwen2' else attn_bias,
                mlp_bias=hf.get('mlp_bias', False), sliding_window=window_of(hf, kind),
                qk_norm='head' if kind == 'qwen3' else 'none')


def _llama_kind(m) -> str:
    """The architecture a Llama-family GPT exports as: q/k norms -> Qwen3, q/k/v biases
    without an output bias -> Qwen2, a window (no biases) -> Mistral, else Llama."""
    if m.qk_norm == 'head':
        return 'qwen3'
    if m.qkv_bias and not m.out_bias:
        return 'qwen2'
    return 'mistral' if m.sliding_window else 'llama'


_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'mistral': 'MistralForCausalLM',
                  'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM'}


def rope_hf(m) -> dict:
    """rope_parameters for the model.rope_* fields (the inverse of `rope_fields`)."""
    out = dict(rope_type=m.rope_scaling, rope_theta=m.rope_base)
    if m.rope_fraction != 1:
        out['partial_rotary_factor'] = m.rope_fraction
    for key, (name, _) in _ROPE_KEYS[m.rope_scaling].items():
        if key != 'attention_factor' or m.rope_attention_factor:
            out[key] = getattr(m, name)
    if m.rope_scaling in ('llama3', 'yarn'):
        out['original_max_position_embeddings'] = m.rope_original_max_len
    return out


def decoder_hf(m, model_type: str, architecture: str, act: str = 'silu') -> dict:
    """The config.json fields every Llama-layout family writes (the inverse of
    `decoder_fields`)."""
    context = max(m.max_len, 4096)
    if m.rope_scaling in ('llama3', 'yarn'):  # the extended context the scaling is for
        context = max(context, int(m.rope_original_max_len * m.rope_factor))
    return dict(architectures=[architecture], model_type=model_type, vocab_size=m.vocab_size,
                num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                num_key_value_heads=m.resolved_kv_heads, hidden_size=m.embed_dim,
                intermediate_size=m.mlp_dim, head_dim=m.resolved_head_dim, hidden_act=act,
                rms_norm_eps=m.norm_eps, rope_theta=m.rope_base, rope_parameters=rope_hf(m),
                max_position_embeddings=context, tie_word_embeddings=m.tie_embeddings,
                attention_dropout=0.0)


def _llama_hf(m) -> dict:
    kind = _llama_kind(m)
    out = decoder_hf(m, kind, _ARCHITECTURES[kind])
    if kind == 'llama':
        out.update(attention_bias=m.qkv_bias, mlp_bias=m.mlp_bias)
    elif kind == 'mistral':
        out.update(sliding_window=m.sliding_window)
    else:  # Qwen2 / Qwen3: every layer slides, or none
        out.update(use_sliding_window=bool(m.sliding_window), max_window_layers=0,
                   sliding_window=m.sliding_window or None)
        if kind == 'qwen3':
            out.update(attention_bias=m.qkv_bias)
    return out


def llama_tensors(m) -> dict:
    """Llama's tensor names (model.layers.{i}.self_attn.q_proj ...) for a jaxbig GPT."""
    e, h, kv, d = m.embed_dim, m.num_heads, m.resolved_kv_heads, m.resolved_head_dim
    p = 'model.layers.{i}.'
    proj = lambda n: ((lambda w: (c(w.T).reshape(e, n, d),)), lambda k: c(k.reshape(e, n * d).T))
    out = {}
    for name, path, n in (('q_proj', 'attn/query', h), ('k_proj', 'attn/key', kv),
                          ('v_proj', 'attn/value', kv)):
        out[f'{p}self_attn.{name}.weight'] = ((f'{path}/kernel',), *proj(n))
        if m.qkv_bias:
            out[f'{p}self_attn.{name}.bias'] = ((f'{path}/bias',),
                                                lambda b, n=n: (b.reshape(n, d),),
                                                lambda b: b.reshape(-1))
    out[p + 'self_attn.o_proj.weight'] = (('attn/out/kernel',),
                                          lambda w: (c(w.T).reshape(h, d, e),),
                                          lambda k: c(k.reshape(h * d, e).T))
    if m.out_bias:
        out[p + 'self_attn.o_proj.bias'] = (('attn/out/bias',), same, ident)
    for name in ('gate', 'up', 'down'):
        out[f'{p}mlp.{name}_proj.weight'] = ((f'mlp/{name}/kernel',), lambda w: (c(w.T),),
                                             lambda k: c(k.T))
        if m.mlp_bias:
            out[f'{p}mlp.{name}_proj.bias'] = ((f'mlp/{name}/bias',), same, ident)
    if m.qk_norm == 'head':
        out[p + 'self_attn.q_norm.weight'] = (('attn/query_norm/scale',), same, ident)
        out[p + 'self_attn.k_norm.weight'] = (('attn/key_norm/scale',), same, ident)
    out[p + 'input_layernorm.weight'] = (('attn_norm/scale',), same, ident)
    out[p + 'post_attention_layernorm.weight'] = (('mlp_norm/scale',), same, ident)
    out['model.embed_tokens.weight'] = (('embed/embedding',), same, ident)
    out['model.norm.weight'] = (('final_norm/scale',), same, ident)
    if not m.tie_embeddings:
        out['lm_head.weight'] = (('unembed/kernel',), lambda w: (c(w.T),), lambda k: c(k.T))
    return out


def _is_llama(m) -> list[str]:
    bad = mismatches(m, norm='rmsnorm', mlp='swiglu', positions='rope', norm_position='pre',
                     parallel_residual=False, embed_scale=False, rope_fraction=1.0)
    bad += [f'qk_norm={m.qk_norm!r}'] if m.qk_norm == 'projection' else []
    bad += no_gemma_switches(m)
    if m.out_bias and not m.qkv_bias:
        bad.append('out_bias=True with qkv_bias=False')
    kind = _llama_kind(m)
    if kind == 'qwen3' and (m.qkv_bias != m.out_bias or m.mlp_bias):
        bad.append('qk_norm with qkv_bias != out_bias or an MLP bias (Qwen3 has one switch)')
    if kind == 'mistral' and (m.qkv_bias or m.mlp_bias):
        bad.append('sliding_window with attention or MLP biases (Mistral has none)')
    return bad


LLAMA = Family('llama', tuple(_ARCHITECTURES.values()), _llama_model, _llama_hf, llama_tensors,
               _is_llama, ignored=('.rotary_emb.inv_freq',))
