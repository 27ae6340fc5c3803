"""Optimizer chain pieces against closed forms."""
import logging
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxbig import defaults, optim
from jaxbig.config import ConfigError


def cfg(**kw):
    """The full optimizer section (`defaults.optimizer`), plain SGD at a constant 0.1."""
    base = dict(name='sgd', lr=0.1, schedule='constant', min_lr_ratio=0.0, clip_norm=0.0,
                momentum=0.0)
    return ml_collections.ConfigDict(defaults.optimizer(**{**base, **kw}))


def one_update(c, params, grads, steps=100):
    tx, _ = optim.build_optimizer(c, steps)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


P = {'kernel': jnp.array([[1.0, -2.0], [3.0, 0.5]]), 'bias': jnp.array([1.0, -1.0])}
G = {'kernel': jnp.array([[0.1, 0.2], [-0.3, 0.4]]), 'bias': jnp.array([0.5, 0.5])}


def test_sgd_plain_l1_l2():
    u = one_update(cfg(l1=0.01, l2=0.1), P, G)
    for k in P:
        expected = -0.1 * (np.asarray(G[k]) + 0.01 * np.sign(P[k]) + 0.1 * np.asarray(P[k]))
        np.testing.assert_allclose(u[k], expected, rtol=1e-6)


def test_adamw_decoupled_decay_only_on_matrices():
    u = one_update(cfg(name='adamw', weight_decay=0.5), P, G)
    # First Adam step: m_hat/sqrt(v_hat) = sign(g) (eps negligible).
    np.testing.assert_allclose(u['kernel'], -0.1 * (np.sign(G['kernel']) + 0.5 * np.asarray(P['kernel'])), atol=1e-5)
    np.testing.assert_allclose(u['bias'], -0.1 * np.sign(G['bias']), atol=1e-5)


def test_adam_mu_dtype_stores_the_first_moment_in_bfloat16():
    """mu in bfloat16, nu and the update in float32; three steps stay within bfloat16
    rounding of the float32 optimizer."""
    def run(**kw):
        tx, _ = optim.build_optimizer(cfg(name='adamw', **kw), 100)
        state, params = tx.init(P), P
        for _ in range(3):
            updates, state = tx.update(G, state, params)
            params = optax.apply_updates(params, updates)
        return state, updates, params

    state, updates, params = run(mu_dtype='bfloat16')
    adam = next(s for s in state if isinstance(s, optax.ScaleByAdamState))
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
    _, _, reference = run()
    for k in P:
        np.testing.assert_allclose(params[k], reference[k], rtol=1e-2, atol=1e-3)
        assert not np.array_equal(params[k], P[k])


def test_clip_by_global_norm():
    u = one_update(cfg(clip_norm=0.1), P, G)
    norm = float(optax.tree.norm(G))
    np.testing.assert_allclose(u['kernel'], -0.1 * np.asarray(G['kernel']) * 0.1 / norm, rtol=1e-5)


def test_sgd_nesterov_momentum_two_steps():
    c = cfg(momentum=0.9, nesterov=True)
    tx, _ = optim.build_optimizer(c, 10)
    state = tx.init(P)
    u1, state = tx.update(G, state, P)
    u2, state = tx.update(G, state, P)
    g = np.asarray(G['bias'])
    # trace: m1 = g, nesterov update = g + 0.9 m1; m2 = g + 0.9 g
    np.testing.assert_allclose(u1['bias'], -0.1 * (g + 0.9 * g), rtol=1e-6)
    np.testing.assert_allclose(u2['bias'], -0.1 * (g + 0.9 * (g + 0.9 * g)), rtol=1e-6)


@pytest.mark.parametrize('name', ['rmsprop', 'adam'])
def test_other_optimizers_descend(name):
    u = one_update(cfg(name=name), P, G)
    assert all(float(jnp.sum(u[k] * G[k])) < 0 for k in P)


def test_schedules():
    s = optim.build_schedule(cfg(lr=1.0, schedule='warmup_cosine', warmup_steps=10,
                                 min_lr_ratio=0.1), 110)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                               [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1], atol=1e-6)
    s = optim.build_schedule(cfg(lr=1.0, schedule='warmup_linear', warmup_steps=0,
                                 min_lr_ratio=0.0), 100)
    np.testing.assert_allclose([s(0), s(50), s(100)], [1.0, 0.5, 0.0], atol=1e-6)
    s = optim.build_schedule(cfg(lr=1.0, schedule='inverse_sqrt', warmup_steps=4), 100)
    np.testing.assert_allclose([s(4), s(12)], [1.0, np.sqrt(4 / 12)], rtol=1e-6)


@pytest.mark.parametrize('kw, message', [
    (dict(lr=-1.0), 'optimizer.lr=-1.0: must be > 0'),
    (dict(name='lamb'), "optimizer.name='lamb'"),
    (dict(schedule='step'), "optimizer.schedule='step'"),
    (dict(name='adam', weight_decay=0.1), 'adamw'),
    (dict(clip_norm=-1.0), 'optimizer.clip_norm'),
    (dict(grad_accum_steps=0), 'optimizer.grad_accum_steps'),
    (dict(name='adamw', mu_dtype='bf16'), "optimizer.mu_dtype='bf16': expected a float dtype"),
    (dict(name='adamw', mu_dtype='int8'), "optimizer.mu_dtype='int8'"),
    (dict(name='sgd', mu_dtype='bfloat16'), 'only Adam / AdamW keep a first moment'),
])
def test_bad_optimizer_configs(kw, message):
    with pytest.raises(ConfigError, match=None) as e:
        optim.build_optimizer(cfg(**kw), 10)
    assert message in str(e.value)


def test_defaults_come_from_defaults_py_only():
    """optim.py has no fallbacks of its own: the full section gives defaults.py's warmup +
    cosine to 10 % and clipping at 1; a partial section is an error, not other defaults."""
    full = ml_collections.ConfigDict(defaults.optimizer(lr=1.0, warmup_steps=10))
    _, s = optim.build_optimizer(full, 110)
    np.testing.assert_allclose([s(0), s(10), s(110)], [0.0, 1.0, 0.1], atol=1e-6)
    sgd = ml_collections.ConfigDict(defaults.optimizer(name='sgd', lr=1.0, schedule='constant',
                                                       momentum=0.0))
    big = jax.tree.map(lambda g: 100.0 * g, G)
    np.testing.assert_allclose(optax.tree.norm(one_update(sgd, P, big)), 1.0, rtol=1e-6)
    for partial in (dict(name='adamw', lr=1e-3), dict(name='sgd', lr=0.5, schedule='constant')):
        with pytest.raises((AttributeError, KeyError)):
            optim.build_optimizer(ml_collections.ConfigDict(partial), 10)


# ----------------------------------------------------------------- weight decay by path

TINY = dict(
    gpt=(dict(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32), 'tokens'),
    # GPT-2-shaped: LayerNorm, learned positions, q/k/v biases [heads, head_dim], untied head
    gpt2=(dict(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
               norm='layernorm', mlp='gelu', positions='learned', max_len=16, qkv_bias=True,
               out_bias=True, mlp_bias=True, tie_embeddings=False), 'tokens'),
    vit=(dict(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32, num_classes=3,
              use_bias=True, pre_norm=True), 'images'),
    bert=(dict(vocab_size=32, max_len=16, width=16, depth=2, num_heads=2, mlp_dim=32,
               pooler=True), 'tokens'),
    t5=(dict(vocab_size=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
             tie_embeddings=False), 't5'),
    two_tower=(dict(image=dict(name='vit', patch_size=4, width=16, depth=1, num_heads=2,
                               mlp_dim=32),
                    text=dict(name='text_encoder', vocab_size=32, max_len=8, width=16, depth=1,
                              num_heads=2, mlp_dim=32), embed_dim=8, use_bias=True), 'pair'),
    lstm=(dict(vocab_size=32, embed_dim=8, hidden_dim=16), 'tokens'),
    resnet=(dict(variant='resnet18', width=8, num_classes=3), 'images'),
)
# Parameters a rank rule (ndim >= 2) decays in some layout, that must never be decayed.
NEVER_DECAYED = dict(
    gpt=['embed/embedding', 'layers/attn_norm/scale', 'final_norm/scale'],
    gpt2=['embed/embedding', 'pos_embed/embedding', 'layers/attn/query/bias',
          'layers/attn_norm/bias', 'layers/mlp/up/bias'],
    vit=['embed/pos_embedding', 'embed/cls', 'encoder/layers/mlp_norm/scale',
         'encoder/layers/key/bias'],
    bert=['embed/word/embedding', 'embed/pos_embedding', 'embed/type_embedding', 'embed/cls',
          'encoder/layers/attn/value/bias', 'mlm_bias'],
    t5=['shared/embedding', 'encoder/relative_bias/embedding', 'decoder/layers/cross_norm/scale'],
    two_tower=['logit_scale', 'logit_bias', 'text_tower/embed/Embed_0/embedding',
               'text_tower/embed/pos_embedding', 'image_tower/embed/cls'],
    lstm=['embed/embedding', 'layers_1/cell/hf/bias'],
    resnet=['encoder/stem_norm/scale', 'head/bias'],
)


def model_params(name, scan_layers=None, **extra):
    """Shapes (jax.ShapeDtypeStruct) of a tiny `name` model's params."""
    from flax import linen as nn

    from jaxbig import models

    kw, inputs = TINY[name]
    kw = {**kw, **extra}
    if scan_layers is not None:
        kw['scan_layers'] = scan_layers
        for tower in ('image', 'text'):
            if tower in kw:
                kw[tower] = {**kw[tower], 'scan_layers': scan_layers}
    model = models.get_model('gpt' if name == 'gpt2' else name, **kw)
    tokens, images = jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 8, 8, 3))
    args = dict(tokens=(tokens,), images=(images,), pair=(images, tokens),
                t5=(tokens, jnp.ones((1, 8)), tokens))[inputs]
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))
    return nn.unbox(variables['params'])


def named(tree):
    return {optim._path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def layer_free(name):
    """'layers_3/attn/query/kernel' (unrolled) -> 'layers/attn/query/kernel' (nn.scan)."""
    return re.sub(r'(^|/)layers_\d+(/|$)', r'\1layers\2', name)


@pytest.mark.parametrize('name', list(TINY))
def test_default_weight_decay_mask_decays_kernels_only(name):
    """On every family (scanned where it scans): the decayed parameters are exactly the
    kernels; norms, biases, embeddings, position tables, class tokens and logit scalars
    are not, whatever their rank."""
    params = model_params(name, scan_layers=True if name in ('gpt', 'gpt2', 'vit', 'bert',
                                                              't5') else None)
    mask = named(optim.weight_decay_mask(params))
    assert {n for n, m in mask.items() if m} == {n for n in mask if n.endswith('/kernel')}
    for n in NEVER_DECAYED[name]:
        assert mask[n] is False, n


def test_default_weight_decay_mask_decays_lora_factors():
    from flax import linen as nn

    from jaxbig import lora, models

    model = lora.wrap(models.get_model('gpt', **TINY['gpt'][0]), ml_collections.ConfigDict(
        dict(targets=['.*attn/(query|value)/kernel'], rank=2, alpha=4.0)))
    params = nn.unbox(jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))['params'])
    mask = named(optim.weight_decay_mask(params))
    assert mask['lora/layers/attn/query/kernel/a'] and mask['lora/layers/attn/value/kernel/b']
    assert not mask['embed/embedding']


@pytest.mark.parametrize('name, extra', [
    ('gpt', dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=384, vocab_size=256)),
    ('gpt2', {}), ('vit', {}), ('bert', {}), ('t5', {})])
def test_weight_decay_mask_same_scanned_and_unrolled(name, extra):
    """The decayed names modulo the layer index, and the decayed / not-decayed scalar counts,
    are the same for model.scan_layers True and False (gpt: experiments/lm.py's tiny)."""
    def summary(scan):
        params = named(model_params(name, scan_layers=scan, **extra))
        mask = named(optim.weight_decay_mask(model_params(name, scan_layers=scan, **extra)))
        decayed = {layer_free(n) for n, m in mask.items() if m}
        kept = {layer_free(n) for n, m in mask.items() if not m}
        count = lambda want: sum(math.prod(params[n].shape) for n, m in mask.items()  # noqa: E731
                                 if m == want)
        return decayed, kept, count(True), count(False)

    scanned, unrolled = summary(True), summary(False)
    assert scanned == unrolled
    assert scanned[2] > 0 and scanned[3] > 0
    if name == 'gpt':  # the tiny LM: 4 x (4 attention + 3 MLP) kernels decayed
        assert scanned[2:] == (851_968, 33_920)


def test_weight_decay_mask_override_and_errors():
    params = model_params('two_tower')
    everything = optim.weight_decay_mask(params, ('.*',))
    assert all(jax.tree.leaves(everything)) and named(everything)['logit_scale']
    only_heads = named(optim.weight_decay_mask(params, ('(image|text)_proj/kernel',)))
    assert {n for n, m in only_heads.items() if m} == {'image_proj/kernel', 'text_proj/kernel'}
    with pytest.raises(ConfigError) as e:
        optim.weight_decay_mask(params, ('.*/kernl',))
    message = str(e.value)
    assert "optimizer.weight_decay_mask: '.*/kernl' matches no parameter" in message
    assert '\n' not in message


@pytest.mark.parametrize('kw, message', [
    (dict(weight_decay_mask=['nope/.*']), "'nope/.*' matches no parameter"),
    (dict(weight_decay_mask=['(x']), "optimizer.weight_decay_mask: '(x' is not a regex"),
    (dict(weight_decay_mask='.*'), 'expected a list of regexes'),
    (dict(weight_decay_mask=['kernel'], freeze=['kernel']), "'kernel' matches no trainable parameter"),
])
def test_bad_weight_decay_masks(kw, message):
    with pytest.raises(ConfigError) as e:
        tx, _ = optim.build_optimizer(cfg(name='adamw', weight_decay=0.1, **kw), 10)
        tx.init(P)
    assert message in str(e.value) and '\n' not in str(e.value)


TOY = {  # a stacked layer (as nn.scan lays it out), a head, an embedding and a scalar
    'embed': {'embedding': jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)},
    'layers': {'attn': {'query': {'kernel': jnp.linspace(-2.0, 1.0, 32).reshape(2, 4, 2, 2),
                                  'bias': jnp.linspace(0.5, -0.5, 8).reshape(2, 2, 2)}},
               'norm': {'scale': jnp.linspace(0.8, 1.2, 8).reshape(2, 4)}},
    'head': {'kernel': jnp.linspace(1.0, -1.0, 12).reshape(4, 3), 'bias': jnp.ones(3)},
    'logit_scale': jnp.asarray(2.3),
}


def numpy_adamw(params, grads, *, lr, b1, b2, eps, wd, decayed):
    """AdamW (Loshchilov & Hutter): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), the
    decay term only on the names in `decayed`; params / grads: {name: array}, grads a list."""
    p = {n: np.asarray(x, np.float64) for n, x in params.items()}
    m = {n: np.zeros_like(x) for n, x in p.items()}
    v = {n: np.zeros_like(x) for n, x in p.items()}
    for t, g in enumerate(grads, start=1):
        for n in p:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            u = (m[n] / (1 - b1**t)) / (np.sqrt(v[n] / (1 - b2**t)) + eps)
            p[n] = p[n] - lr * (u + (wd * p[n] if n in decayed else 0.0))
    return p


@pytest.mark.parametrize('mask, decayed', [
    ([], {'layers/attn/query/kernel', 'head/kernel'}),
    (['.*'], set(named(TOY))),
])
def test_adamw_decays_only_the_masked_leaves(mask, decayed):
    """Three AdamW updates against NumPy: decoupled decay on exactly the selected leaves
    (by default the kernels, the stacked [layers, ...] norm scale and bias not)."""
    rng = np.random.default_rng(0)
    grads = [{n: rng.normal(size=np.shape(x)) for n, x in named(TOY).items()} for _ in range(3)]
    c = cfg(name='adamw', lr=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.3,
            weight_decay_mask=mask)
    tx, _ = optim.build_optimizer(c, 10)
    params, state = TOY, tx.init(TOY)
    structure = jax.tree.structure(TOY)
    for g in grads:
        g_tree = jax.tree.unflatten(structure, [jnp.asarray(g[n], jnp.float32)
                                                for n in named(TOY)])
        updates, state = tx.update(g_tree, state, params)
        params = optax.apply_updates(params, updates)
    expected = numpy_adamw(named(TOY), grads, lr=0.1, b1=0.9, b2=0.99, eps=1e-8, wd=0.3,
                           decayed=decayed)
    for n, x in named(params).items():
        np.testing.assert_allclose(x, expected[n], rtol=1e-5, atol=1e-6, err_msg=n)


def test_weight_decay_counts_logged_once_and_old_configs_use_the_default(caplog):
    caplog.set_level(logging.INFO)
    tx, _ = optim.build_optimizer(cfg(name='adamw', weight_decay=0.1), 10)
    state = tx.init(TOY)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, TOY), state, TOY)
    lines = [r.getMessage() for r in caplog.records if 'weight decay' in r.getMessage()]
    assert lines == ['weight decay 0.1 (default rules): 2 tensors / 44 scalars decayed, '
                     '5 tensors / 40 scalars not']
    caplog.clear()
    optim.build_optimizer(cfg(name='adamw', weight_decay=0.0), 10)[0].init(TOY)
    assert not [r for r in caplog.records if 'weight decay' in r.getMessage()]
    # A config.json written before optimizer.weight_decay_mask existed: the default rules.
    old = ml_collections.ConfigDict({k: v for k, v in cfg(name='adamw', weight_decay=0.1)
                                     .to_dict().items() if k != 'weight_decay_mask'})
    tx_old, _ = optim.build_optimizer(old, 10)
    old_updates, _ = tx_old.update(jax.tree.map(jnp.ones_like, TOY), tx_old.init(TOY), TOY)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(old_updates)):
        np.testing.assert_array_equal(a, b)
