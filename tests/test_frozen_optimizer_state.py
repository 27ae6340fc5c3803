"""Frozen parameters carry no optimizer state: `optimizer.freeze` partitions the whole chain.

    multi_transform({'trainable': clip -> ... -> adam -> decay -> lr -> lr_mults,
                     'frozen': set_to_zero()}, labels)

Frozen leaves get zero updates (bit-identical parameters) and only optax.MaskedNode (no
arrays) in the optimizer state; the trainable leaves follow a plain optax chain applied to
the trainable subtree alone (global-norm clipping over the trainable gradients only).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxbig import defaults, optim, parallel
from jaxbig import step as step_lib
from jaxbig.config import ConfigError

LR, STEPS, WD, CLIP = 0.1, 10, 0.1, 0.5

# Distinct shapes, so a moment of a frozen leaf would be recognisable by its shape.
PARAMS = {
    'encoder': {'kernel': jnp.full((6, 5), 0.3), 'bias': jnp.full((7,), -0.2)},
    'head': {'kernel': jnp.full((4, 3), 0.1), 'bias': jnp.zeros((2,))},
}


def cfg(**kw):
    return ml_collections.ConfigDict(defaults.optimizer(
        **{**dict(name='adamw', lr=LR, warmup_steps=2, weight_decay=WD, clip_norm=CLIP), **kw}))


def grads_at(i):
    """Gradients of step i; the frozen ones are large, so clipping that counted them (or an
    update that used them) would show in the trainable updates."""
    rng = np.random.default_rng(i)
    scale = {'encoder': 50.0, 'head': 1.0}
    return {k: {n: jnp.asarray(scale[k] * rng.normal(size=p.shape), jnp.float32)
                for n, p in sub.items()} for k, sub in PARAMS.items()}


def reference_chain():
    """The same optimizer from optax pieces, for the trainable subtree only."""
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, LR, 2),
         optax.cosine_decay_schedule(LR, STEPS - 2, alpha=0.1)], [2])
    return optax.chain(
        optax.clip_by_global_norm(CLIP),
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WD,
                    mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
    )


def run(tx, params, grads_fn, steps=3):
    """`steps` jitted updates; returns the parameters and the updates of every step."""
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    history = []
    for i in range(steps):
        params, state, updates = step(params, state, grads_fn(i))
        history.append(updates)
    return params, history


def nbytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_frozen_leaves_have_no_optimizer_state():
    tx, _ = optim.build_optimizer(cfg(freeze=['encoder/.*']), STEPS)
    head = PARAMS['head']
    for state in (tx.init(PARAMS), jax.eval_shape(tx.init, PARAMS)):
        leaves = jax.tree.leaves(state)
        arrays = [x for x in leaves if x.ndim > 0]
        counters = [x for x in leaves if x.ndim == 0]
        # Adam's mu and nu of the trainable leaves, nothing else of any size.
        assert sorted(x.shape for x in arrays) == sorted(2 * [p.shape for p in head.values()])
        assert nbytes(arrays) == 2 * nbytes(head)
        assert nbytes(state) == 2 * nbytes(head) + nbytes(counters)
        assert len(counters) <= 2  # adam's count and the schedule's count, int32 each
    # The frozen leaves' places in the moments are optax.MaskedNode.
    adam = [s for s in jax.tree.leaves(
        tx.init(PARAMS), is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert isinstance(adam[0].mu['encoder']['kernel'], optax.MaskedNode)
    assert adam[0].mu['head']['kernel'].shape == (4, 3)


def test_frozen_bit_identical_and_trainable_match_plain_optax_on_the_subtree():
    tx, _ = optim.build_optimizer(cfg(freeze=['encoder/.*']), STEPS)
    params, history = run(tx, PARAMS, grads_at)
    for name, p in PARAMS['encoder'].items():
        assert np.array_equal(params['encoder'][name], p)
        assert all(not np.any(u['encoder'][name]) for u in history)
    ref_params, ref_history = run(reference_chain(), PARAMS['head'],
                                  lambda i: grads_at(i)['head'])
    for u, ref in zip(history, ref_history):
        for name in ref:
            np.testing.assert_allclose(u['head'][name], ref[name], rtol=1e-6, atol=1e-9)
    for name in ref_params:
        np.testing.assert_allclose(params['head'][name], ref_params[name], rtol=1e-6)
        assert not np.array_equal(params['head'][name], PARAMS['head'][name])


@pytest.mark.parametrize('freeze', [[], ['encoder/kernel']])
def test_lr_mults_scale_the_updates(freeze):
    """Each update is the plain optax chain's update on the trainable subtree (at the same
    parameters) times the leaf's multiplier. First match wins, freeze before lr_mults:
    encoder/kernel stays frozen though 'encoder/.*' matches it; head/kernel takes 0.5, not 10."""
    mults = [['encoder/.*', 3.0], ['head/kernel', 0.5], ['.*', 10.0]]
    expected = {'encoder': {'kernel': 3.0, 'bias': 3.0}, 'head': {'kernel': 0.5, 'bias': 10.0}}
    tx, _ = optim.build_optimizer(cfg(freeze=freeze, lr_mults=mults), STEPS)
    ref = reference_chain()

    def trainable(tree):
        return {k: {n: x for n, x in sub.items() if f'{k}/{n}' not in freeze}
                for k, sub in tree.items()}

    params = PARAMS
    state, ref_state = tx.init(params), ref.init(trainable(params))
    for i in range(3):
        grads = grads_at(i)
        updates, state = jax.jit(tx.update)(grads, state, params)
        ref_updates, ref_state = jax.jit(ref.update)(trainable(grads), ref_state,
                                                     trainable(params))
        for path in freeze:
            k, n = path.split('/')
            assert not np.any(updates[k][n])
        for k, sub in ref_updates.items():
            for n, r in sub.items():
                np.testing.assert_allclose(updates[k][n], expected[k][n] * r,
                                           rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, updates)
    for path in freeze:
        k, n = path.split('/')
        assert np.array_equal(params[k][n], PARAMS[k][n])


@pytest.mark.parametrize('kw, pattern', [
    (dict(freeze=['encoderr/.*']), 'encoderr/.*'),
    (dict(freeze=['encoder/.*'], lr_mults=[['heaad/.*', 0.1]]), 'heaad/.*'),
    (dict(lr_mults=[['heaad/.*', 0.1]]), 'heaad/.*'),
    # Shadowed: every encoder/ leaf is frozen first, so this lr_mults pattern matches none.
    (dict(freeze=['encoder/.*'], lr_mults=[['encoder/kernel', 0.1]]), 'encoder/kernel'),
])
def test_a_pattern_that_matches_nothing_is_an_error(kw, pattern):
    tx, _ = optim.build_optimizer(cfg(**kw), STEPS)
    with pytest.raises(ConfigError, match=f'pattern {pattern!r} matches no parameter'):
        tx.init(PARAMS)


def test_groups_are_logged(caplog):
    caplog.set_level('INFO')
    tx, _ = optim.build_optimizer(cfg(freeze=['encoder/kernel'], lr_mults=[['head/.*', 0.1]]), STEPS)
    tx.init(PARAMS)
    assert "optimizer parameter groups: {'default': 1, 'frozen': 1, 'mult_0': 2}" in caplog.text


def test_sharded_state_specs_and_jit_with_frozen_leaves():
    """train.py's path: opt_state specs derived from the abstract train state (the moments of
    a trainable leaf take its spec; MaskedNode places have no array to place), a jitted init
    with those shardings, then a jitted update."""
    tx, _ = optim.build_optimizer(cfg(freeze=['encoder/.*'], warmup_steps=0), STEPS)
    P = jax.sharding.PartitionSpec
    specs = {'encoder': {'kernel': P('embed', 'mlp'), 'bias': P('mlp')},
             'head': {'kernel': P('embed', None), 'bias': P(None)}}
    rules = [('embed', 'data'), ('mlp', None)]
    mesh = jax.make_mesh((1,), ('data',))

    def init():
        return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=PARAMS,
                                   opt_state=tx.init(PARAMS), rng=jax.random.PRNGKey(0))

    with jax.set_mesh(mesh):
        abstract = jax.eval_shape(init)
        logical = parallel.state_logical_specs(abstract, specs, rules=rules)
        adam = [s for s in jax.tree.leaves(logical.opt_state, is_leaf=lambda s: isinstance(
            s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
        assert len(adam) == 1
        for moment in (adam[0].mu, adam[0].nu):
            assert moment['head']['kernel'] == P('embed', None)
            assert isinstance(moment['encoder']['kernel'], optax.MaskedNode)
        shardings = parallel.logical_to_shardings(logical, mesh, rules)
        state = jax.jit(init, out_shardings=shardings)()
        updates, _ = jax.jit(tx.update)(grads_at(0), state.opt_state, state.params)
    assert not np.any(updates['encoder']['kernel'])
    assert np.any(updates['head']['kernel'])
