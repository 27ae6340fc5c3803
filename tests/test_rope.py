"""The decoder pieces of 2026 checkpoints, each against an independent reference: RoPE
scaling kinds against transformers' ROPE_INIT_FUNCTIONS, partial rotary, sliding-window
attention (einsum blocks, jax's fused entry point, the KV cache) against NumPy, q/k
RMSNorm, and each bad model.* value as one line. Whole layers (norm positions, parallel
residual, Gemma's norm and MLP) are held against transformers in test_interop_hf.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_generate import _params  # random params from NumPy, no init compile

from jaxbig.models import gpt, layers
from jaxbig.models.rope import RopeScaling, apply_rope, frequencies

SMALL = dict(vocab_size=61, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
             mlp_dim=48)

# (transformers rope_parameters, jaxbig RopeScaling): head_dim 16, base 5000, so the
# wavelengths (6 .. 10,860 positions) fall on every side of each kind's bounds.
KINDS = {
    'default': (dict(rope_type='default'), RopeScaling()),
    'linear': (dict(rope_type='linear', factor=2.5), RopeScaling('linear', 2.5)),
    'llama3': (dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=64),
               RopeScaling('llama3', 8.0, 64, 1.0, 4.0)),
    'llama3_narrow': (dict(rope_type='llama3', factor=4.0, low_freq_factor=2.0,
                           high_freq_factor=3.0, original_max_position_embeddings=200),
                      RopeScaling('llama3', 4.0, 200, 2.0, 3.0)),
    'yarn': (dict(rope_type='yarn', factor=4.0, original_max_position_embeddings=32),
             RopeScaling('yarn', 4.0, 32)),
    'yarn_betas_attention_factor': (
        dict(rope_type='yarn', factor=16.0, original_max_position_embeddings=64, beta_fast=8.0,
             beta_slow=2.0, attention_factor=1.3),
        RopeScaling('yarn', 16.0, 64, beta_fast=8.0, beta_slow=2.0, attention_factor=1.3)),
}


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_frequencies_match_transformers(kind):
    transformers = pytest.importorskip('transformers')
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params, ours = KINDS[kind]
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                      max_position_embeddings=1024,
                                      rope_parameters=dict(params, rope_theta=5000.0))
    if params['rope_type'] == 'default':
        inv_freq, factor = 1.0 / 5000.0 ** (np.arange(0, 16, 2) / 16), 1.0
    else:
        inv_freq, factor = ROPE_INIT_FUNCTIONS[params['rope_type']](config, 'cpu')
    got, got_factor = frequencies(16, 5000.0, ours)
    assert got.dtype == np.float32 and got.shape == (8,)
    np.testing.assert_allclose(got, np.asarray(inv_freq), rtol=2e-6)
    assert got_factor == pytest.approx(factor, rel=1e-12)
    if kind != 'default':  # each kind really moves some frequencies
        assert not np.allclose(got, frequencies(16, 5000.0)[0])


def test_apply_rope_rotates_by_the_scaled_frequencies_and_multiplies_by_the_factor():
    """Against NumPy complex rotation: pair (x_i, x_{i+d/2}) times factor * exp(i pos f_i)."""
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 16)).astype(np.float32)
    positions = np.arange(100, 105)
    _, scaling = KINDS['yarn']
    inv_freq, factor = frequencies(16, 5000.0, scaling)
    z = (x[..., :8] + 1j * x[..., 8:]) * factor * np.exp(
        1j * positions[:, None, None] * inv_freq.astype(np.float64))
    np.testing.assert_allclose(apply_rope(x, positions, 5000.0, scaling),
                               np.concatenate([z.real, z.imag], -1), rtol=1e-4, atol=1e-4)


def test_partial_rope_rotates_the_leading_features_only():
    x = np.random.default_rng(1).normal(size=(1, 6, 2, 16)).astype(np.float32)
    positions = np.arange(6)
    got = np.asarray(apply_rope(x, positions, 100.0, dim=4))
    np.testing.assert_array_equal(got[..., 4:], x[..., 4:])
    np.testing.assert_allclose(got[..., :4], apply_rope(x[..., :4], positions, 100.0),
                               rtol=1e-6)
    inv_freq = 100.0 ** (-np.arange(2) / 2)  # frequencies of the 4 rotated features
    z = (x[..., :2] + 1j * x[..., 2:4]) * np.exp(1j * positions[:, None, None] * inv_freq)
    np.testing.assert_allclose(got[..., :4], np.concatenate([z.real, z.imag], -1), atol=1e-5)


def np_window_attention(q, k, v, window, segments=None):
    """Causal attention where query i sees key j iff j <= i, i - j < window (0: no limit)
    and (with segments) segments[i] == segments[j]; GQA by repeating kv heads."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    seq = q.shape[1]
    i, j = np.arange(seq)[:, None], np.arange(seq)[None, :]
    ok = (j <= i) & ((i - j < window) if window else True)
    ok = np.broadcast_to(ok, (q.shape[0], 1, seq, seq))
    if segments is not None:
        ok = ok & (segments[:, None, :, None] == segments[:, None, None, :])
    s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
    s = np.where(ok, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum('bhqk,bkhd->bqhd', p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize('num_blocks,window', [(1, 5), (3, 5), (4, 1), (2, 30), (3, 4)])
def test_windowed_causal_attention_matches_numpy(num_blocks, window):
    rng = np.random.default_rng(num_blocks)
    q = rng.normal(size=(2, 12, 4, 8)).astype(np.float32)
    k, v = rng.normal(size=(2, 2, 12, 2, 8)).astype(np.float32)
    segments = np.repeat(np.array([[0, 1, 2], [0, 0, 1]]), 4, axis=1)
    np.testing.assert_allclose(layers.causal_attention(q, k, v, num_blocks, window=window),
                               np_window_attention(q, k, v, window), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        layers.causal_attention(q, k, v, num_blocks, segment_ids=segments, window=window),
        np_window_attention(q, k, v, window, segments), rtol=1e-5, atol=1e-5)


def test_windowed_cached_attention_matches_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 2, 2, 8)).astype(np.float32)
    k, v = rng.normal(size=(2, 2, 7, 2, 8)).astype(np.float32)
    k_pos = np.array([[-1, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6]])
    q_pos = np.array([[4, 5], [2, 6]])
    got = layers.cached_attention(q, k, v, q_pos, k_pos, window=3)
    s = np.einsum('bqhd,bkhd->bhqk', q.astype(np.float64), k) / np.sqrt(8)
    ok = (k_pos[:, None] >= 0) & (k_pos[:, None] <= q_pos[..., None]) & (
        q_pos[..., None] - k_pos[:, None] < 3)
    p = np.exp(np.where(ok[:, None], s, -np.inf) - s.max(-1, keepdims=True))
    want = np.einsum('bhqk,bkhd->bqhd', p / p.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


MODERN = dict(SMALL, sliding_window=5, qk_norm='head', rope_scaling='llama3', rope_factor=8.0,
              rope_original_max_len=16)


def test_window_qk_norm_and_scaling_reach_the_model():
    """Each switch changes the logits; the fused entry point computes the same model."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 12)))
    model = gpt.Model(**MODERN)
    params = _params(model)
    out = model.apply({'params': params}, tokens)
    for change in (dict(sliding_window=0), dict(rope_scaling='default'), dict(qk_norm='none')):
        other = gpt.Model(**dict(MODERN, **change))
        assert not np.allclose(other.apply({'params': params}, tokens), out, atol=1e-3)
    norm = params['layers']['attn']['query_norm']['scale']
    assert norm.value.shape == (2, 8) and norm.names == ('layers', 'kv')  # [layers, head_dim]
    np.testing.assert_allclose(gpt.Model(**MODERN, attention='xla').apply({'params': params},
                                                                          tokens),
                               out, rtol=1e-5, atol=1e-5)
    early = model.apply({'params': params}, tokens[:, :8])  # causal: a prefix's logits
    np.testing.assert_allclose(early, out[:, :8], rtol=1e-5, atol=1e-5)


def _decoded_logits(model, params, tokens, prefill: int):
    """Logits of a KV-cached decode: `prefill` tokens at once, then one token a call."""
    seq = tokens.shape[1]
    cache, pos = gpt.init_cache(model, 1, seq), jnp.arange(seq)[None]
    dec = jax.jit(functools.partial(model.apply, {'params': params}, method='decode'))
    logits, cache = dec(tokens[:, :prefill], pos[:, :prefill], cache)
    steps = [logits]
    for i in range(prefill, seq):
        logits, cache = dec(tokens[:, i:i + 1], pos[:, i:i + 1], cache)
        steps.append(logits)
    return jnp.concatenate(steps, 1)


def test_windowed_decode_equals_full_forward_across_the_window():
    """Prefill 4 then 8 single steps past a 5-token window == the training forward."""
    model = gpt.Model(**MODERN)
    params = _params(model)
    tokens = jnp.asarray([[5, 7, 11, 13, 2, 40, 9, 1, 33, 21, 8, 60]])
    full = model.apply({'params': params}, tokens)
    np.testing.assert_allclose(_decoded_logits(model, params, tokens, 4), full, rtol=1e-4,
                               atol=1e-4)


GEMMA3_LIKE = dict(SMALL, num_layers=3, sliding_window=3, window_pattern='LG', qk_norm='head',
                  rope_local_base=100.0, rope_scaling='linear', rope_factor=4.0,
                  attention_scale=0.3, attn_softcap=2.0, logit_softcap=5.0, norm='rmsnorm_plus_one',
                  norm_position='both', mlp='geglu', embed_scale=True)


def test_window_pattern_scan_equals_loop_and_decode_equals_forward():
    """A local / global pattern (cut short: L G L), its per-layer RoPE, soft-capping and
    norms around both sublayers: the scanned model equals the unrolled one with the same
    weights, and KV-cached decoding equals the full forward across the window."""
    tokens = jnp.asarray([[5, 7, 11, 13, 2, 40, 9, 1, 33, 21]])
    scanned = gpt.Model(**GEMMA3_LIKE)
    params = _params(scanned)
    full = scanned.apply({'params': params}, tokens)
    loop = gpt.Model(**GEMMA3_LIKE, scan_layers=False)
    unstacked = dict(params, **{f'layers_{i}': jax.tree.map(lambda x, i=i: x[i], params['layers'])
                                for i in range(3)})
    del unstacked['layers']
    np.testing.assert_allclose(loop.apply({'params': unstacked}, tokens), full, rtol=1e-5,
                               atol=1e-5)
    for change in (dict(window_pattern='L', rope_local_base=0.0), dict(rope_local_base=0.0),
                   dict(attn_softcap=0.0), dict(logit_softcap=0.0)):
        other = gpt.Model(**dict(GEMMA3_LIKE, **change)).apply({'params': params}, tokens)
        assert not np.allclose(other, full, atol=1e-3), change
    assert float(jnp.abs(full).max()) <= 5.0  # the output cap
    np.testing.assert_allclose(_decoded_logits(scanned, params, tokens, 3), full, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize('field,value,message', [
    ('rope_scaling', 'dynamic', "model.rope_scaling='dynamic': expected one of"),
    ('rope_original_max_len', 0, "model.rope_scaling='llama3' needs model.rope_original_max_len"),
    ('rope_factor', 0.0, 'model.rope_factor=0.0: expected > 0'),
    ('rope_high_freq_factor', 0.5, 'model.rope_high_freq_factor=0.5 must exceed'),
    ('sliding_window', -1, 'model.sliding_window=-1: expected 0 (off)'),
    ('qk_norm', 'all', "model.qk_norm='all': expected 'none', 'head' or 'projection'"),
    ('norm_position', 'sandwich', "model.norm_position='sandwich': expected one of"),
    ('rope_fraction', 0.3, 'model.rope_fraction=0.3: expected a fraction in (0, 1] of head '
                           'dim 8 that is an even number of features'),
    ('window_pattern', 'LGX', "model.window_pattern='LGX': expected L (local"),
    ('rope_local_base', 100.0, 'model.rope_local_base needs global layers'),
    ('attn_softcap', 50.0, "model.attn_softcap needs model.attention='einsum'"),
])
def test_bad_switches_are_one_line(field, value, message):
    extra = dict(attention='xla') if field == 'attn_softcap' else {}
    model = gpt.Model(**dict(MODERN, **{field: value}, **extra))
    with pytest.raises(ValueError) as e:
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert message in str(e.value) and '\n' not in str(e.value)
