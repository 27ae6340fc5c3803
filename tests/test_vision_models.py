"""Model pieces of the contrastive experiments, at tiny sizes:

* ResNet-18 / ResNet-50 / plain CNN: feature and logit shapes, stage resolutions of the
  small-image and ImageNet stems (shapes only, `jax.eval_shape`: nothing compiles);
* ViT: class-token vs mean pooling read the right tokens; `nn.scan` stacks each layer's
  parameters on a leading 'layers' axis and equals the unrolled layers;
* text encoder: EOS pooling takes the first EOS's hidden state, mean pooling the non-pad
  mean, and padding after the EOS changes neither;
* two-tower: the initial logit scale / bias of experiments/clip.py's CLIP and SigLIP
  configs (CLIP exp(t) = 1 / 0.07; SigLIP t' = log 10, b = -10).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbig import config as config_lib
from jaxbig import models
from jaxbig.models import resnet, text_encoder, vit

KEY = jax.random.PRNGKey(0)


def init(model, *args):
    """Random params of the init's shapes from NumPy (compiling the init's random number
    generation would cost more than the tests): N(0, 0.3), norm scales around 1."""
    shapes = nn.unbox(jax.eval_shape(model.init, KEY, *args))['params']
    rng = np.random.default_rng(0)

    def draw(path, x):
        centre = 1.0 if 'scale' in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(centre + 0.3 * rng.normal(size=x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def apply(model, params, *args, method=None):
    return jax.jit(lambda p, *a: model.apply({'params': p}, *a, method=method))(params, *args)


def _tokens_and_features(m, x):
    """The encoder's output tokens [B, (1 +) N, width] before pooling, and the features."""
    return m.encoder(m.embed(x)), m.features(x)


# ----------------------------------------------------------------------------- ResNet, CNN

def _shapes(model, images):
    """(output shape, {module path: output shape}) without compiling."""
    out, state = jax.eval_shape(
        lambda: model.init_with_output(KEY, images, capture_intermediates=True))
    inter = jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]
    paths = {'/'.join(str(k.key) for k in p[:-2]): v.shape for p, v in inter}
    return out.shape, paths


@pytest.mark.parametrize('variant, width, dim', [('resnet18', 4, 32), ('resnet50', 4, 128)])
def test_resnet_feature_shapes_and_stage_resolutions(variant, width, dim):
    images = jnp.zeros((2, 16, 16, 3))
    shape, paths = _shapes(resnet.Model(variant=variant, width=width, norm_groups=2), images)
    assert shape == (2, dim)  # D = 8 * width (basic) or 32 * width (bottleneck)
    last = 'encoder/stage3_block1' if variant == 'resnet18' else 'encoder/stage3_block2'
    assert paths[last] == (2, 2, 2, dim)  # small stem: stride 1, then /2 in stages 2-4
    assert paths['encoder/stage0_block0'] == (2, 16, 16, dim // 8)
    shape, paths = _shapes(resnet.Model(variant=variant, width=width, norm_groups=2,
                                        stem='imagenet', num_classes=7), jnp.zeros((2, 64, 64, 3)))
    assert shape == (2, 7)  # logits
    assert paths['encoder/stage0_block0'] == (2, 16, 16, dim // 8)  # 7x7/2 + max-pool: /4
    assert paths[last] == (2, 2, 2, dim)


def test_plain_cnn_shapes():
    shape, paths = _shapes(resnet.Model(variant='cnn', width=4, cnn_layers=3, norm_groups=2),
                           jnp.zeros((3, 8, 8, 1)))
    assert shape == (3, 16)  # width * 2 ** (layers - 1)
    assert [paths[f'encoder/conv{i}'] for i in range(3)] == [
        (3, 8, 8, 4), (3, 4, 4, 8), (3, 2, 2, 16)]


def test_resnet_errors():
    images = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="variant 'resnet34'"):
        _shapes(resnet.Model(variant='resnet34'), images)
    with pytest.raises(ValueError, match="stem 'cifar'"):
        _shapes(resnet.Model(stem='cifar', width=4), images)


# ----------------------------------------------------------------------------- ViT

VIT = dict(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)




def test_vit_class_token_and_mean_pooling():
    images = jax.random.normal(KEY, (2, 8, 12, 3))  # N = 2 x 3 patches
    cls_model = vit.Model(**VIT, pool='cls')
    params = init(cls_model, images)
    tokens, cls_features = apply(cls_model, params, images, method=_tokens_and_features)
    assert tokens.shape == (2, 1 + 6, 16)
    np.testing.assert_allclose(cls_features, tokens[:, 0], atol=1e-6)

    mean_model = vit.Model(**VIT, pool='mean')
    mean_params = {k: v for k, v in params.items() if k != 'embed'}
    mean_params['embed'] = {k: v for k, v in params['embed'].items() if k != 'cls'}
    assert 'cls' not in jax.eval_shape(mean_model.init, KEY, images)['params']['embed']
    mean_tokens, mean_features = apply(mean_model, mean_params, images,
                                       method=_tokens_and_features)
    assert mean_tokens.shape == (2, 6, 16)
    np.testing.assert_allclose(mean_features, np.asarray(mean_tokens).mean(1), atol=1e-5)
    assert mean_features.shape == cls_features.shape == (2, 16)
    assert not np.allclose(mean_features, cls_features, atol=1e-3)
    logits = jax.eval_shape(vit.Model(**VIT, num_classes=5).init_with_output, KEY, images)[0]
    assert logits.shape == (2, 5)


def test_vit_scan_stacks_layers_and_equals_unrolled():
    images = jax.random.normal(KEY, (2, 8, 8, 3))
    deep = {**VIT, 'depth': 3}
    scanned = vit.Model(**deep, scan_layers=True)
    boxed = jax.eval_shape(scanned.init, KEY, images)
    params = init(scanned, images)
    layers = params['encoder']['layers']
    assert layers['query']['kernel'].shape == (3, 16, 2, 8)  # [depth, embed, heads, kv]
    assert all(x.shape[0] == 3 for x in jax.tree.leaves(layers))
    specs = nn.get_partition_spec(boxed)['params']['encoder']['layers']
    for name in ('query', 'key', 'value', 'out', 'mlp_in', 'mlp_out'):  # kernels carry axes
        assert specs[name]['kernel'][0] == 'layers', (name, specs[name])
    unrolled = vit.Model(**deep, scan_layers=False)
    u_params = {**params, 'encoder': {'final_norm': params['encoder']['final_norm'],
                                      **{f'layers_{i}': jax.tree.map(lambda x: x[i], layers)
                                         for i in range(3)}}}
    expected = nn.unbox(jax.eval_shape(unrolled.init, KEY, images))['params']
    assert jax.tree.map(jnp.shape, u_params) == jax.tree.map(jnp.shape, expected)
    np.testing.assert_allclose(apply(unrolled, u_params, images),
                               apply(scanned, params, images), atol=1e-5)


def test_vit_errors():
    with pytest.raises(ValueError, match='not a multiple of model patch_size=4'):
        jax.eval_shape(vit.Model(**VIT).init, KEY, jnp.zeros((1, 10, 8, 3)))
    with pytest.raises(ValueError, match="pool 'max'"):
        jax.eval_shape(vit.Model(**VIT, pool='max').init, KEY, jnp.zeros((1, 8, 8, 3)))


# ----------------------------------------------------------------------------- text encoder

TEXT = dict(vocab_size=20, max_len=12, width=16, depth=2, num_heads=2, mlp_dim=32)
TOKENS = np.array([[5, 6, 7, 1, 0, 0, 0, 0],     # eos at 3
                   [8, 9, 1, 0, 0, 0, 0, 0],     # eos at 2
                   [4, 4, 4, 4, 4, 4, 4, 4]])    # no eos: the last position


def _text_outputs(params, tokens):
    """(hidden states [B, L, width], EOS-pooled, mean-pooled features), one compile per shape."""
    eos_model = text_encoder.Model(**TEXT, pool='eos')
    mean_model = text_encoder.Model(**TEXT, pool='mean')
    hidden = eos_model.apply({'params': params}, tokens,
                             method=lambda m, t: m.encoder(m.embed(t), t != m.pad_id))
    return (hidden, eos_model.apply({'params': params}, tokens),
            mean_model.apply({'params': params}, tokens))  # the same parameters


def test_text_encoder_eos_and_mean_pooling():
    params = init(text_encoder.Model(**TEXT), TOKENS)
    outputs = jax.jit(_text_outputs)
    hidden, eos, mean = (np.asarray(x) for x in outputs(params, TOKENS))
    np.testing.assert_allclose(eos, hidden[[0, 1, 2], [3, 2, 7]], atol=1e-6)
    valid = TOKENS != 0
    ref = np.stack([h[v].mean(0) for h, v in zip(hidden, valid)])
    np.testing.assert_allclose(mean, ref, atol=1e-5)
    assert eos.shape == mean.shape == (3, 16)
    assert not np.allclose(eos[:2], mean[:2], atol=1e-3)

    # More padding after the eos (a longer max_len, other batch mates) changes neither.
    padded = np.concatenate([TOKENS, np.zeros((3, 4), TOKENS.dtype)], axis=1)
    _, eos_padded, mean_padded = outputs(params, padded)
    np.testing.assert_allclose(eos_padded[:2], eos[:2], atol=1e-5)
    np.testing.assert_allclose(mean_padded[:2], mean[:2], atol=1e-5)
    # ... while a different word before the eos changes the eos output.
    changed = TOKENS.copy()
    changed[0, 0] = 11
    _, eos_changed, _ = outputs(params, changed)
    np.testing.assert_allclose(eos_changed[1:], eos[1:], atol=1e-6)
    assert not np.allclose(eos_changed[0], eos[0], atol=1e-3)


def test_text_encoder_errors():
    with pytest.raises(ValueError, match='text length 13 > model max_len=12'):
        jax.eval_shape(text_encoder.Model(**TEXT).init, KEY, np.ones((1, 13), np.int32))
    with pytest.raises(ValueError, match="text model pool 'cls'"):
        jax.eval_shape(text_encoder.Model(**TEXT, pool='cls').init, KEY, TOKENS)


# ----------------------------------------------------------------------------- two towers

@pytest.mark.parametrize('loss', ['clip', 'siglip'])
def test_two_tower_initial_temperature_and_bias_from_clip_config(loss):
    cfg = config_lib.load(f'experiments/clip.py:loss={loss},image=vit,image_width=0,text_depth=2,'
                          'width=8,embed=8')
    cfg.model.image.depth = cfg.model.text.depth = 1
    model = models.get_model('two_tower', **{k: v for k, v in cfg.model.items() if k != 'name'})
    # The scalars as the model's setup initialises them (the towers' params are not built).
    scalars = nn.unbox(model.init(KEY, method=lambda m: (m.logit_scale, m.use_bias and
                                                         m.logit_bias)))['params']
    if loss == 'clip':
        assert set(scalars) == {'logit_scale'}
        assert math.exp(float(scalars['logit_scale'])) == pytest.approx(1 / 0.07, rel=1e-6)
    else:
        assert float(scalars['logit_scale']) == pytest.approx(math.log(10), rel=1e-6)
        assert float(scalars['logit_bias']) == pytest.approx(-10.0)
    if loss == 'siglip':
        return  # the towers and the forward pass do not depend on the loss: checked once
    images = jax.random.normal(KEY, (2, 8, 8, 3))
    tokens = np.array([[5, 6, 1, 0], [7, 1, 0, 0]], np.int32)
    params = init(model, images, tokens)
    assert set(params) - {'image_tower', 'text_tower', 'image_proj', 'text_proj'} == set(scalars)
    params.update(scalars)
    out = apply(model, params, images, tokens)
    assert float(out['logit_scale']) == float(scalars['logit_scale'])
    assert float(out['logit_bias']) == 0.0  # no bias: the loss sees 0
    for key in ('image', 'text'):
        assert out[key].shape == (2, 8)
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, atol=1e-5)
