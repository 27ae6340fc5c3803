"""model.moe.first_dense: a MoE GPT whose first k layers keep a dense MLP (DeepSeek's
first_k_dense_replace, Qwen3-MoE's mlp_only_layers). The layouts agree (scanned `dense_layers`
+ `layers` = unrolled `dense_layers_<i>` + `layers_<i>`), decoding equals the forward, the
routing stats cover the MoE layers only, FLOPs and active parameters count the dense layers'
MLP whole, and int8 / pruning / decoding see the second stack. Logits against transformers'
Qwen3-MoE with mlp_only_layers: tests/test_interop_hf.py (`qwen3_moe_dense_first`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbig import generate, pruning, quantize
from jaxbig.config import ConfigError
from jaxbig.interop import decoders
from jaxbig.models import gpt, layout

SHAPE = dict(vocab_size=64, num_layers=3, num_heads=2, embed_dim=32, mlp_dim=48)
MOE = dict(experts=4, experts_per_token=2, expert_dim=16, first_dense=1)


def _model(scan: bool, **moe):
    return gpt.Model(**SHAPE, scan_layers=scan, moe=dict(MOE, **moe))


def _tokens(seq=8):
    return jax.random.randint(jax.random.PRNGKey(1), (2, seq), 0, SHAPE['vocab_size'])


def _init(model):
    return nn.unbox(jax.jit(lambda key: layout.init_params(model, {'params': key}, _tokens()))(
        jax.random.PRNGKey(0)))


def test_layouts_agree_and_decoding_equals_the_forward():
    tokens, logits = _tokens(), {}
    for scan in (True, False):
        model = _model(scan)
        params = _init(model)
        want = {'dense_layers', 'layers'} if scan else {'dense_layers_0', 'layers_0', 'layers_1'}
        assert want <= set(params)
        dense = params['dense_layers' if scan else 'dense_layers_0']['mlp']
        assert set(dense) == {'gate', 'up', 'down'}  # a dense SwiGLU: no router, no experts
        assert dense['up']['kernel'].shape[-1] == SHAPE['mlp_dim']
        out, state = jax.jit(lambda p, t: model.apply({'params': p}, t, mutable=[
            'intermediates']))(params, tokens)  # (jitted: eager flax is slow to dispatch)
        stats = state['intermediates']['moe'][0]
        assert stats['probs'].shape == (2, 2, 8, 4)  # [MoE layers, batch, seq, experts]
        logits[scan] = np.asarray(out)
        if not scan:  # (the unrolled decode: generate's, in the next test)
            continue
        decode = jax.jit(lambda p, *a: model.apply({'params': p}, *a, method=model.decode))
        positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
        first, cache = decode(params, tokens[:, :5], positions[:, :5], gpt.init_cache(model, 2, 8))
        step, _ = decode(params, tokens[:, 5:6], positions[:, 5:6], cache)
        np.testing.assert_allclose(np.asarray(first), logits[scan][:, :5], atol=1e-5)
        np.testing.assert_allclose(np.asarray(step)[:, 0], logits[scan][:, 5], atol=1e-5)
    np.testing.assert_allclose(logits[True], logits[False], atol=1e-5)


def test_decoding_form_unrolls_both_stacks_and_generates_the_same():
    model = _model(True)
    params = _init(model)
    unrolled, flat = generate.decoding_form(model, params)
    assert not unrolled.scan_layers
    assert {'dense_layers_0', 'layers_0', 'layers_1'} <= set(flat)
    assert not {'dense_layers', 'layers'} & set(flat)
    prompts = [np.array([3, 4, 5]), np.array([7, 8])]
    a, _ = generate.generate(model, params, prompts, max_new_tokens=4)
    b, _ = generate.generate(_model(False), layout.to_layout(params, _init(_model(False))),
                             prompts, max_new_tokens=4)
    np.testing.assert_array_equal(a, b)


def test_flops_and_active_parameters_count_the_dense_layers_whole():
    model = _model(True)
    params = _init(model)
    d, m, e, v, hd = SHAPE['embed_dim'], SHAPE['mlp_dim'], MOE['expert_dim'], 64, 16
    attention = 2 * d * (2 + 2) * hd  # q, k, v, out of 2 heads of 16 (no GQA)
    dense, moe = 3 * d * m, 3 * d * e * 2 + d * 4  # k = 2 experts + the router
    weights = 3 * attention + dense + 2 * moe + d * v
    want = 6 * weights + 3 * 3 * 4 * 8 * 2 * hd / 2
    assert gpt.flops_per_token(model, 8) == want
    routed = 2 * 3 * d * e * 4  # two MoE layers' expert kernels, 2 of 4 visited
    assert gpt.active_params(model, params) == gpt.count_params(params) - routed // 2


def test_int8_and_pruning_see_the_dense_stack():
    keys = [jax.tree_util.DictKey(k) for k in ('dense_layers', 'mlp', 'up', 'kernel')]
    assert quantize.contracted_axes(keys, 3) == (1,)  # [layers, embed, mlp]: embed contracts
    assert pruning.is_stacked(keys)


@pytest.mark.parametrize('first_dense', [3, -1])
def test_first_dense_must_leave_a_moe_layer(first_dense):
    with pytest.raises(ConfigError, match=rf'model.moe.first_dense={first_dense}: expected '
                       r'0 <= k < model.num_layers=3') as e:
        _init(_model(True, first_dense=first_dense))
    assert '\n' not in str(e.value)


def test_only_qwen3_moe_exports_dense_layers():
    mixtral = _model(True)
    with pytest.raises(ConfigError, match=r'only Qwen3-MoE / Qwen2-MoE have dense layers'):
        decoders.family_for(mixtral)
    qwen = gpt.Model(**SHAPE, qk_norm='head', moe=dict(MOE, normalize=False))
    family = decoders.family_for(qwen)
    hf = family.hf_config(qwen)
    assert (family.name, hf['mlp_only_layers'], hf['intermediate_size']) == (
        'llama_moe', [0], SHAPE['mlp_dim'])
