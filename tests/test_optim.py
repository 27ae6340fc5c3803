"""Optimizer chain pieces against closed forms."""
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


P = {'w': jnp.array([[1.0, -2.0], [3.0, 0.5]]), 'b': jnp.array([1.0, -1.0])}
G = {'w': jnp.array([[0.1, 0.2], [-0.3, 0.4]]), 'b': jnp.array([0.5, 0.5])}


def test_sgd_plain_l1_l2():
    u = one_update(cfg(l1=0.01, l2=0.1), P, G)
    for k in P:
        expected = -0.1 * (np.asarray(G[k]) + 0.01 * np.sign(P[k]) + 0.1 * np.asarray(P[k]))
        np.testing.assert_allclose(u[k], expected, rtol=1e-6)


def test_adamw_decoupled_decay_only_on_matrices():
    u = one_update(cfg(name='adamw', weight_decay=0.5), P, G)
    # First Adam step: m_hat/sqrt(v_hat) = sign(g) (eps negligible).
    np.testing.assert_allclose(u['w'], -0.1 * (np.sign(G['w']) + 0.5 * np.asarray(P['w'])), atol=1e-5)
    np.testing.assert_allclose(u['b'], -0.1 * np.sign(G['b']), atol=1e-5)


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
    np.testing.assert_allclose(u['w'], -0.1 * np.asarray(G['w']) * 0.1 / norm, rtol=1e-5)


def test_sgd_nesterov_momentum_two_steps():
    c = cfg(momentum=0.9, nesterov=True)
    tx, _ = optim.build_optimizer(c, 10)
    state = tx.init(P)
    u1, state = tx.update(G, state, P)
    u2, state = tx.update(G, state, P)
    g = np.asarray(G['b'])
    # trace: m1 = g, nesterov update = g + 0.9 m1; m2 = g + 0.9 g
    np.testing.assert_allclose(u1['b'], -0.1 * (g + 0.9 * g), rtol=1e-6)
    np.testing.assert_allclose(u2['b'], -0.1 * (g + 0.9 * (g + 0.9 * g)), rtol=1e-6)


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
