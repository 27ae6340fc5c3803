"""models.layout.init_params: `scan_layers` changes speed, not the model. For the same seed
every family with the switch gets the same initial numbers in both layouts (unrolled layer
i == slice i of the scanned stack, exactly), the same logical axis names (less the leading
'layers' of a stack), and the same forward outputs to float32 rounding; also under
jax.eval_shape, for nested tower / backbone configs and through a LoRA wrapper."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import DEFAULT_COMPILE

from jaxbig import lora, models, parallel
from jaxbig.interop.mapped import unscan  # the import / export convention, independent of layout
from jaxbig.models import layout

SEED = 3
# 'rbg' keys compile init ~3x faster on CPU than threefry; the mechanism does not depend on
# the PRNG. The 'gpt' case uses step.init_fn's own raw jax.random.PRNGKey (threefry).
RAW_KEY_CASE = 'gpt'
FORWARD_TOL = dict(rtol=1e-5, atol=1e-6)  # float32: scan and loop compile to different kernels

TOKENS = jax.random.randint(jax.random.key(0), (2, 8), 2, 60)
IMAGES = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
MASK = jnp.array([[1] * 8, [1] * 5 + [0] * 3], jnp.int32)

GPT = dict(name='gpt', vocab_size=61, num_layers=3, num_heads=4, num_kv_heads=2, embed_dim=32,
           mlp_dim=48, tie_embeddings=False)  # Llama-shaped: RMSNorm, SwiGLU, RoPE, GQA
GPT2 = dict(name='gpt', vocab_size=61, num_layers=3, num_heads=2, embed_dim=32, mlp_dim=64,
            norm='layernorm', mlp='gelu', positions='learned', max_len=16, qkv_bias=True,
            out_bias=True, mlp_bias=True)
BERT = dict(name='bert', vocab_size=61, max_len=9, width=32, depth=3, num_heads=2, mlp_dim=48,
            pooler=True)
T5 = dict(name='t5', vocab_size=61, num_layers=2, num_decoder_layers=3, num_heads=2,
          embed_dim=32, mlp_dim=48, relative_buckets=8, relative_max_distance=16)
VIT = dict(name='vit', patch_size=4, width=16, depth=3, num_heads=2, mlp_dim=32, num_classes=5)
TEXT = dict(name='text_encoder', vocab_size=61, max_len=8, width=16, depth=3, num_heads=2,
            mlp_dim=32, causal=True)

# name -> (model config with scan_layers where it sits, inputs). `{}` marks the switch.
CASES = {
    'gpt': (GPT, (TOKENS,)),
    'gpt2_style': (GPT2, (TOKENS,)),
    'bert': (BERT, (TOKENS, MASK)),
    't5': (T5, (TOKENS, MASK, TOKENS[:, :6])),
    'vit': (VIT, (IMAGES,)),
    'text_encoder': (TEXT, (TOKENS,)),
}


def _build(cfg, scan):
    cfg = dict(cfg, scan_layers=scan)
    return models.get_model(cfg.pop('name'), **cfg)


def _two_tower(image_scan, text_scan):
    return models.get_model('two_tower', image=dict(VIT, num_classes=0, scan_layers=image_scan),
                            text=dict(TEXT, scan_layers=text_scan), embed_dim=8)


def _lora_classifier(scan):
    model = models.get_model('classifier', backbone=dict(GPT, scan_layers=scan), num_classes=3)
    return lora.wrap(model, ml_collections.ConfigDict(
        dict(targets=['.*attn/(query|value)/kernel'], rank=2, alpha=4.0)))


def _rngs(raw=False):
    key = jax.random.PRNGKey(SEED) if raw else jax.random.key(SEED, impl='rbg')
    return {'params': key, 'dropout': key}


def _init(model, inputs, raw=False):
    """init_params as step.init_fn / run.setup use it: under the mesh and logical rules,
    abstractly first, then jitted into the shardings of the abstract tree's logical axes.
    -> the boxed params (the abstract boxes holding the concrete values)."""
    rngs = _rngs(raw)
    fn = lambda: layout.init_params(model, rngs, *inputs, train=False)  # noqa: E731
    mesh, rules = parallel.make_mesh({}), parallel.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(fn)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        # The default pipeline, as in a run: the suite's fast compiles (conftest) round a
        # few elementwise results differently in a scanned and an unrolled program.
        params = jax.jit(lambda: nn.unbox(fn()), out_shardings=shardings,
                         compiler_options=DEFAULT_COMPILE)()
    return jax.tree.map(lambda box, x: box.replace_boxed(x) if _is_box(box) else x,
                        abstract, params, is_leaf=_is_box)


def _per_layer(params):
    """{canonical path: (array, logical names or None)}: stacks cut into `layers_<i>`."""
    out = {}
    for path, box in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]:
        path = jax.tree_util.keystr(path, simple=True, separator='/')
        value, names = (box.value, box.names) if _is_box(box) else (box, None)
        for canonical, _, i in unscan(path, value.shape):
            if i is not None and names is not None:
                assert names[0] == 'layers', (path, names)
            out[canonical] = (value if i is None else value[i],
                              names if i is None or names is None else names[1:])
    return out


def _is_box(x):
    return isinstance(x, nn.Partitioned)


def _assert_same_init(scanned_params, other_params):
    scanned, other = _per_layer(scanned_params), _per_layer(other_params)
    assert sorted(scanned) == sorted(other)
    for path, (value, names) in scanned.items():
        np.testing.assert_array_equal(np.asarray(other[path][0]), np.asarray(value), err_msg=path)
        assert other[path][1] == names, (path, other[path][1], names)


def _forward(model, params, inputs):
    return jax.jit(lambda p: model.apply({'params': nn.unbox(p)}, *inputs))(params)


# gpt in the default suite (the decoder stack); the other families (~10 s each, t5 too)
# under -m slow, which the invariance matrix's scan cases also cover
FAST_LAYOUTS = ('gpt',)


@pytest.mark.parametrize('case', [
    c if c in FAST_LAYOUTS else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CASES)])
def test_unrolled_init_is_the_scanned_init_sliced(case):
    cfg, inputs = CASES[case]
    scanned_model, unrolled_model = _build(cfg, True), _build(cfg, False)
    raw = case == RAW_KEY_CASE
    scanned, unrolled = _init(scanned_model, inputs, raw), _init(unrolled_model, inputs, raw)
    flat = jax.tree_util.tree_flatten_with_path(unrolled, is_leaf=_is_box)[0]
    assert any('layers_0' in jax.tree_util.keystr(p) for p, _ in flat)  # really unrolled
    _assert_same_init(scanned, unrolled)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **FORWARD_TOL),
                 _forward(unrolled_model, unrolled, inputs),
                 _forward(scanned_model, scanned, inputs))


def test_scanned_models_pass_straight_through():
    """A model scanned everywhere is `model.init` itself: today's scanned runs keep their
    numbers; a model without the switch (resnet) too."""
    model = _build(GPT, True)
    assert layout.scanned_form(model) is model
    resnet = models.get_model('resnet')
    assert layout.scanned_form(resnet) is resnet
    rngs = _rngs()
    today = jax.jit(lambda: model.init(rngs, TOKENS, train=False)['params'],
                    compiler_options=DEFAULT_COMPILE)()
    jax.tree.map(np.testing.assert_array_equal, _init(model, (TOKENS,)), today)


def test_two_tower_towers_in_any_layouts():
    """The towers' switches sit in config dicts (each flipped on its own, so mixed
    layouts work the same way): both towers unrolled draw what both scanned draw."""
    inputs = (IMAGES, TOKENS)
    scanned_model, unrolled_model = _two_tower(True, True), _two_tower(False, False)
    canonical = layout.scanned_form(unrolled_model)
    assert canonical.image['scan_layers'] is canonical.text['scan_layers'] is True
    scanned, unrolled = _init(scanned_model, inputs), _init(unrolled_model, inputs)
    _assert_same_init(scanned, unrolled)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **FORWARD_TOL),
                 _forward(unrolled_model, unrolled, inputs),
                 _forward(scanned_model, scanned, inputs))


def test_lora_classifier_backbone_same_base_and_adapters():
    """Through lora.LoraModel and classifier's backbone dict: base weights and the random
    adapter A matrices are the same numbers in both layouts."""
    scanned, unrolled = _lora_classifier(True), _lora_classifier(False)
    params_s, params_u = _init(scanned, (TOKENS,)), _init(unrolled, (TOKENS,))
    assert 'lora' in params_u and 'layers_2' in params_u['lora']['encoder']
    _assert_same_init(params_s, params_u)
    np.testing.assert_allclose(_forward(unrolled, params_u, (TOKENS,)),
                               _forward(scanned, params_s, (TOKENS,)), **FORWARD_TOL)


def test_unmatched_param_is_a_clear_error():
    target = {'encoder': {'blocks_0': {'kernel': jax.ShapeDtypeStruct((2,), jnp.float32)}}}
    with pytest.raises(ValueError, match='encoder/blocks_0/kernel has no counterpart'):
        layout.to_layout({'encoder': {'other': {'kernel': jnp.zeros((1, 2))}}}, target)
    with pytest.raises(ValueError, match=r'float32\[3\] in the model but float32\[2\]'):
        layout.to_layout({'encoder': {'blocks': {'kernel': jnp.zeros((1, 2))}}},
                         {'encoder': {'blocks_0': {'kernel': jax.ShapeDtypeStruct((3,),
                                                                                 jnp.float32)}}})
