"""The Mixture-of-Experts families' config mapping (jaxbig/interop/llama_moe.py), no weights:
released configs map to the model fields, what jaxbig cannot compute is one ConfigError
line, and export picks the MoE family for a MoE GPT and refuses the dense ones."""
import pytest

from jaxbig.config import ConfigError
from jaxbig.interop import decoders
from jaxbig.models import gpt

BASE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2)
RELEASED = {  # the fields that matter of each published config.json -> jaxbig fields
    'Mixtral-8x7B-v0.1': (
        dict(architectures=['MixtralForCausalLM'], model_type='mixtral', intermediate_size=14336,
             num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6, sliding_window=None),
        dict(mlp_dim=14336, sliding_window=0, rope_base=1e6),
        dict(experts=8, experts_per_token=2, expert_dim=0, normalize=True)),
    'Qwen3-30B-A3B': (
        dict(architectures=['Qwen3MoeForCausalLM'], model_type='qwen3_moe', intermediate_size=6144,
             moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
             norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], head_dim=128),
        dict(qk_norm='head', mlp_dim=6144, head_dim=128),
        dict(experts=128, experts_per_token=8, expert_dim=768, normalize=True)),
    'Qwen1.5-MoE-A2.7B': (
        dict(architectures=['Qwen2MoeForCausalLM'], model_type='qwen2_moe',
             intermediate_size=5632, moe_intermediate_size=1408,
             shared_expert_intermediate_size=5632, num_experts=60, num_experts_per_tok=4,
             norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], qkv_bias=True,
             use_sliding_window=False),
        dict(qkv_bias=True, out_bias=False, mlp_dim=5632, sliding_window=0),
        dict(experts=60, experts_per_token=4, expert_dim=1408, shared_experts=4,
             shared_gate=True, normalize=False)),
    'OLMoE-1B-7B': (
        dict(architectures=['OlmoeForCausalLM'], model_type='olmoe', intermediate_size=1024,
             num_experts=64, num_experts_per_tok=8, norm_topk_prob=False, clip_qkv=None),
        dict(qk_norm='projection', mlp_dim=1024),
        dict(experts=64, experts_per_token=8, normalize=False)),
}


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_released_configs_map_to_model_fields(name):
    hf, fields, moe = RELEASED[name]
    hf = {**BASE, **hf}
    family = decoders.family_of(hf)
    assert family.name == 'llama_moe'
    got = family.model_config(hf)
    assert {k: got[k] for k in fields} == fields
    assert {k: got['moe'][k] for k in moe} == moe and got['moe']['dispatch'] == 'dropless'


@pytest.mark.parametrize('changes, message', [
    (dict(model_type='qwen3_moe', architectures=['Qwen3MoeForCausalLM'], num_experts=4,
          moe_intermediate_size=8, mlp_only_layers=[1]),
     r'mlp_only_layers=\[1\].*dense layers other than the first k'),
    (dict(model_type='qwen3_moe', architectures=['Qwen3MoeForCausalLM'], num_experts=4,
          moe_intermediate_size=8, decoder_sparse_step=2), 'decoder_sparse_step=2'),
    (dict(model_type='olmoe', architectures=['OlmoeForCausalLM'], num_experts=4, clip_qkv=8.0),
     'clip_qkv=8.0'),
    (dict(model_type='mixtral', architectures=['MixtralForCausalLM']), 'num_local_experts'),
    (dict(model_type='qwen2_moe', architectures=['Qwen2MoeForCausalLM'], num_experts=4,
          moe_intermediate_size=8, shared_expert_intermediate_size=12),
     r'shared_expert_intermediate_size=12.*a multiple of moe_intermediate_size=8'),
])
def test_unrepresentable_moe_fields_are_one_line(changes, message):
    hf = {**BASE, 'intermediate_size': 16, 'num_experts_per_tok': 2, **changes}
    with pytest.raises(ConfigError, match=message) as e:
        decoders.family_of(hf).model_config(hf)
    assert '\n' not in str(e.value)


def test_export_picks_the_moe_family_and_dense_families_refuse_it():
    shape = dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=16)
    moe = gpt.Model(**shape, moe={'experts': 4, 'experts_per_token': 2})
    assert decoders.family_for(moe).name == 'llama_moe'
    with pytest.raises(ConfigError, match=r"llama needs other .*moe\.experts=4"):
        decoders.family_for(moe, 'llama')
    with pytest.raises(ConfigError, match=r'llama_moe needs other moe\.experts=0'):
        decoders.family_for(gpt.Model(**shape), 'llama_moe')
    shared = gpt.Model(**shape, moe={'experts': 4, 'shared_experts': 1})
    with pytest.raises(ConfigError, match='shared_experts=1 without moe.shared_gate'):
        decoders.family_for(shared)
    gated = gpt.Model(**shape, qkv_bias=True,
                      moe={'experts': 4, 'shared_experts': 1, 'shared_gate': True})
    assert decoders.family_for(gated).hf_config(gated)['architectures'] == [
        'Qwen2MoeForCausalLM']
    biased = gpt.Model(**shape, moe={'experts': 4, 'bias_rate': 0.001})
    with pytest.raises(ConfigError, match='bias_rate=0.001'):
        decoders.family_for(biased)
