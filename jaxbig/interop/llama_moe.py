"""The Llama-layout Mixture-of-Experts families <-> jaxbig's GPT with `model.moe`:
MixtralForCausalLM, Qwen3MoeForCausalLM, Qwen2MoeForCausalLM and OlmoeForCausalLM.
Attention, norms and RoPE are Llama's (llama.py: Mixtral's sliding window as Mistral's,
Qwen3's per-head q/k norms, Qwen2's q/k/v biases, OLMoE's q/k norms over the whole
projection as OLMo 2's); every layer's feed-forward is a softmax top-k router over SwiGLU
experts (jaxbig.models.moe), the k weights renormalised (Mixtral always; the others when
norm_topk_prob); Qwen2-MoE adds a shared expert of shared_expert_intermediate_size (=
model.moe.shared_experts x moe_intermediate_size) scaled per token by a sigmoid gate
(model.moe.shared_gate).

Tensors, per layer i and expert j (HF Linear weights are [out, in]):

    Mixtral      block_sparse_moe.gate.weight [E, d]          -> mlp/router [d, E]
                 block_sparse_moe.experts.{j}.w1 / w3 / w2    -> mlp/experts/gate / up / down
                                                                 /kernel [j] ([d, m], [m, d])
    Qwen3-MoE,   mlp.gate.weight [E, d]                       -> mlp/router
    Qwen2-MoE,   mlp.experts.{j}.gate_proj / up_proj / down_proj -> the same
    OLMoE
    Qwen2-MoE    mlp.shared_expert.{gate,up,down}_proj.weight -> mlp/shared/{gate,up,down}/kernel
    (only)       mlp.shared_expert_gate.weight [1, d]         -> mlp/shared_gate [d, 1]

Qwen3-MoE's and Qwen2-MoE's mlp_only_layers = [0 .. k-1] (dense layers first, of
intermediate_size) is model.moe.first_dense = k. Refused in one line: other dense layers
among the sparse ones (mlp_only_layers not a prefix, decoder_sparse_step > 1), OLMoE's
clip_qkv or attention biases. transformers runs every MoE dropless: a jaxbig model trained
with model.moe.dispatch='capacity' exports its weights as they are, and computes there as
jaxbig's dropless dispatch does.
"""

from __future__ import annotations

from jaxbig import defaults
from jaxbig.interop.family import Family, c, mismatches, need, no_gemma_switches
from jaxbig.interop.llama import decoder_fields, decoder_hf, llama_tensors, window_of
from jaxbig.interop.olmo2 import projection_norms

_ARCHITECTURES = {'mixtral': 'MixtralForCausalLM', 'qwen3_moe': 'Qwen3MoeForCausalLM',
                  'qwen2_moe': 'Qwen2MoeForCausalLM', 'olmoe': 'OlmoeForCausalLM'}
_LAYOUT = {  # kind -> (feed-forward prefix, router, {jaxbig kernel: HF name})
    'mixtral': ('block_sparse_moe', 'gate', {'gate': 'w1', 'up': 'w3', 'down': 'w2'}),
    'qwen3_moe': ('mlp', 'gate', {'gate': 'gate_proj', 'up': 'up_proj', 'down': 'down_proj'}),
}
_LAYOUT['olmoe'] = _LAYOUT['qwen2_moe'] = _LAYOUT['qwen3_moe']
_QWEN_MOE = ('qwen3_moe', 'qwen2_moe')  # mlp_only_layers, moe_intermediate_size
_TRANSPOSED = (lambda w: (c(w.T),), lambda k: c(k.T))  # HF Linear [out, in] <-> kernel [in, out]


def _model(hf: dict) -> dict:
    kind = hf.get('model_type', 'mixtral')
    experts = hf.get('num_local_experts') or hf.get('num_experts')
    need(hf, 'num_local_experts', bool(experts), 'a MoE config names its experts')
    fields = decoder_fields(hf)
    moe = dict(experts=int(experts), experts_per_token=int(hf['num_experts_per_tok']),
               normalize=True, dispatch='dropless')
    if kind in _QWEN_MOE:
        dense = sorted(hf.get('mlp_only_layers') or [])
        need(hf, 'mlp_only_layers', dense == list(range(len(dense))),
             'dense layers other than the first k (model.moe.first_dense)')
        need(hf, 'decoder_sparse_step', hf.get('decoder_sparse_step', 1) == 1,
             'MoE on every other layer only')
        moe.update(expert_dim=int(hf['moe_intermediate_size']),
                   normalize=bool(hf.get('norm_topk_prob', False)), first_dense=len(dense))
    if kind == 'qwen3_moe':
        fields.update(qk_norm='head', qkv_bias=bool(hf.get('attention_bias', False)),
                      out_bias=bool(hf.get('attention_bias', False)))
    if kind == 'qwen2_moe':
        m, shared = int(hf['moe_intermediate_size']), hf.get('shared_expert_intermediate_size')
        need(hf, 'shared_expert_intermediate_size', bool(shared) and shared % m == 0,
             f'a shared expert of a multiple of moe_intermediate_size={m}')
        moe.update(shared_experts=shared // m, shared_gate=True)
        fields.update(qkv_bias=bool(hf.get('qkv_bias', True)), out_bias=False)
    if kind == 'olmoe':
        need(hf, 'clip_qkv', hf.get('clip_qkv') is None, 'clipped q / k / v')
        need(hf, 'attention_bias', not hf.get('attention_bias'), 'expected false')
        moe.update(normalize=bool(hf.get('norm_topk_prob', False)))
        fields.update(qk_norm='projection')
    window = window_of(hf, {'mixtral': 'mistral', 'qwen3_moe': 'qwen3',
                            'qwen2_moe': 'qwen2'}.get(kind, kind))
    return dict(fields, sliding_window=window, moe=defaults.moe(**moe))


def _kind(m) -> str:
    if m.moe_spec and m.moe_spec.shared_gate:
        return 'qwen2_moe'
    return {'head': 'qwen3_moe', 'projection': 'olmoe'}.get(m.qk_norm, 'mixtral')


def _hf(m) -> dict:
    kind, spec = _kind(m), m.moe_spec
    out = decoder_hf(m, kind, _ARCHITECTURES[kind])
    out.update(num_local_experts=spec.experts, num_experts_per_tok=spec.experts_per_token,
               router_jitter_noise=0.0, output_router_logits=False)
    if kind == 'mixtral':
        out.update(intermediate_size=spec.expert_dim or m.mlp_dim,
                   sliding_window=m.sliding_window or None)
    elif kind == 'olmoe':
        out.update(num_experts=spec.experts, intermediate_size=spec.expert_dim or m.mlp_dim,
                   norm_topk_prob=spec.normalize, clip_qkv=None, attention_bias=False)
    else:
        out.update(num_experts=spec.experts, moe_intermediate_size=spec.expert_dim or m.mlp_dim,
                   norm_topk_prob=spec.normalize, decoder_sparse_step=1,
                   mlp_only_layers=list(range(spec.first_dense)),
                   use_sliding_window=bool(m.sliding_window),
                   sliding_window=m.sliding_window or None, max_window_layers=0)
        if kind == 'qwen3_moe':
            out.update(attention_bias=m.qkv_bias)
        else:
            out.update(qkv_bias=m.qkv_bias, shared_expert_intermediate_size=(
                spec.shared_experts * (spec.expert_dim or m.mlp_dim)))
    return out


def _tensors(m) -> dict:
    """llama_tensors (their dense MLP for the first_dense layers only: the export and
    import loops give a template the layers that hold its paths), plus the router and the
    per-expert kernels."""
    out = {k: v for k, v in llama_tensors(m).items()
           if '.mlp.' not in k or m.moe_spec.first_dense}
    if m.qk_norm == 'projection':
        out.update(projection_norms(m))
    prefix, router, names = _LAYOUT[_kind(m)]
    p = f'model.layers.{{i}}.{prefix}.'
    out[p + f'{router}.weight'] = (('mlp/router',), *_TRANSPOSED)
    if m.moe_spec.shared_gate:  # Qwen2-MoE's gated shared expert
        out[p + 'shared_expert_gate.weight'] = (('mlp/shared_gate',), *_TRANSPOSED)
        for name in ('gate', 'up', 'down'):
            out[p + f'shared_expert.{name}_proj.weight'] = ((f'mlp/shared/{name}/kernel',),
                                                            *_TRANSPOSED)
    for ours, theirs in names.items():
        out[p + f'experts.{{j}}.{theirs}.weight'] = ((f'mlp/experts/{ours}/kernel',),
                                                     *_TRANSPOSED)
    return out


def _reasons(m) -> list[str]:
    spec = m.moe_spec
    if not spec:
        return ['moe.experts=0 (a dense model)']
    bad = mismatches(m, norm='rmsnorm', mlp='swiglu', positions='rope', norm_position='pre',
                     parallel_residual=False, embed_scale=False, rope_fraction=1.0,
                     mlp_bias=False)
    bad += no_gemma_switches(m)
    if spec.shared_experts and not spec.shared_gate:
        bad.append(f'moe.shared_experts={spec.shared_experts} without moe.shared_gate (only '
                   "Qwen2-MoE's gated shared expert has a Hugging Face form)")
    bad += [f'moe.bias_rate={spec.bias_rate} (a routing bias)'] if spec.bias_rate else []
    if spec.first_dense and _kind(m) not in _QWEN_MOE:
        bad.append(f'moe.first_dense={spec.first_dense} (only Qwen3-MoE / Qwen2-MoE have '
                   'dense layers)')
    if _kind(m) == 'mixtral':
        bad += [f'qk_norm={m.qk_norm!r}'] if m.qk_norm != 'none' else []
        bad += ['moe.normalize=False (Mixtral renormalises the top-k)'] if not spec.normalize \
            else []
        bad += ['qkv_bias / out_bias (Mixtral has none)'] if m.qkv_bias or m.out_bias else []
    elif _kind(m) == 'olmoe':
        bad += ['attention biases (OLMoE has none)'] if m.qkv_bias or m.out_bias else []
        bad += [f'sliding_window={m.sliding_window}'] if m.sliding_window else []
    elif _kind(m) == 'qwen2_moe':
        bad += [f'qk_norm={m.qk_norm!r}'] if m.qk_norm != 'none' else []
        bad += ['out_bias=True (Qwen2-MoE biases q / k / v only)'] if m.out_bias else []
    elif m.qkv_bias != m.out_bias:
        bad.append('qkv_bias != out_bias (Qwen3-MoE has one attention_bias)')
    return bad


LLAMA_MOE = Family('llama_moe', tuple(_ARCHITECTURES.values()), _model, _hf, _tensors,
                   _reasons, ignored=('.rotary_emb.inv_freq',), moe=True)
