"""jaxbig.quantize: per-output-channel symmetric int8 against NumPy, the GPT's kernels ~4x
smaller, logits and loss nearly unchanged; on a briefly trained model (slow)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_LM, run_cli
from jaxbig import quantize
from jaxbig.losses.autoregressive import token_cross_entropy
from jaxbig.models import gpt

SMALL = dict(vocab_size=61, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=48)


def np_quantize(w, axes):
    scale = np.max(np.abs(w), axis=axes, keepdims=True) / 127.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def test_quantize_array_matches_numpy():
    w = np.random.default_rng(0).normal(size=(3, 8, 5)).astype(np.float32)
    w[:, :, 2] *= 10  # channels of very different ranges keep their own scales
    qt = quantize.quantize_array(w, (1,))
    q, scale = np_quantize(w, (1,))
    assert qt.q.dtype == jnp.int8 and qt.scale.shape == (3, 1, 5)
    np.testing.assert_allclose(qt.scale, scale, rtol=1e-6)
    assert np.abs(np.asarray(qt.q, np.int32) - q).max() <= 1  # rounding at exact halves
    assert np.abs(np.asarray(qt.q)).max() == 127
    err = np.abs(np.asarray(qt.dequantize()) - w)
    assert (err <= scale / 2 + 1e-6).all()


@functools.cache
def _model_params():
    model = gpt.Model(**SMALL)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(0)

    def draw(path, x):
        is_scale = 'scale' in jax.tree_util.keystr(path)
        return jnp.asarray((1.0 if is_scale else 0.0) + 0.1 * rng.normal(size=x.shape), x.dtype)

    return model, nn.unbox(jax.tree_util.tree_map_with_path(draw, shapes)['params'])


def test_gpt_kernels_per_output_channel_and_4x_smaller():
    _, params = _model_params()
    qp = quantize.quantize_params(params)
    layers = qp['layers']
    # [layers, embed, heads, head_dim]: one scale per (layer, head, head_dim) output channel
    assert layers['attn']['query']['kernel'].scale.shape == (2, 1, 2, 16)
    # out: [layers, heads, head_dim, embed] contracts heads and head_dim
    assert layers['attn']['out']['kernel'].scale.shape == (2, 1, 1, 32)
    assert layers['mlp']['down']['kernel'].scale.shape == (2, 1, 32)
    assert not isinstance(qp['embed']['embedding'], quantize.QTensor)  # embeddings stay float
    ratio = quantize.kernel_bytes(params) / quantize.kernel_bytes(qp)
    assert 3.5 < ratio < 4.0, ratio
    # Round trip: every dequantised kernel within half a step of the original.
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = quantize._keys(path)
        if keys[-1] == 'kernel':
            qt = functools.reduce(lambda t, k: t[k], keys, qp)
            assert (np.abs(qt.dequantize() - w) <= qt.scale / 2 + 1e-7).all(), keys


def test_int8_logits_and_loss_barely_move():
    model, params = _model_params()
    tokens = jax.random.randint(jax.random.key(0), (4, 33), 0, SMALL['vocab_size'])
    fwd = jax.jit(lambda p: model.apply({'params': quantize.dequantize(p)}, tokens[:, :-1]))
    ref, q8 = fwd(params), fwd(quantize.quantize_params(params))
    rel = np.linalg.norm(q8 - ref) / np.linalg.norm(ref)
    assert rel < 0.02, rel
    loss = lambda logits: float(token_cross_entropy(logits, tokens[:, 1:], jnp.ones((4, 32)))['loss'])
    assert abs(loss(q8) / loss(ref) - 1) < 0.02


@pytest.mark.slow
def test_int8_on_a_briefly_trained_lm(tfds_dir, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), '--config', 'experiments/lm.py:steps=150',
            *TINY_LM, '--config.train.log_every=50', timeout=900)
    r = quantize.report(str(tmp_path))
    assert 3.5 < r['kernel_bytes_ratio'] < 4.0, r
    assert r['val_loss_float'] < 3.0, r  # it learned something
    assert abs(r['val_loss_change']) < 0.02, r
