"""Mixture-of-Experts (jaxbig.models.moe, jaxbig.losses.moe_aux) against NumPy references:
routing, the two dispatches against a per-token loop, the capacity's drops, the auxiliary
losses, gradients, and the GPT with MoE layers end to end."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxbig import aggregate
from jaxbig.config import ConfigError
from jaxbig.losses import moe_aux
from jaxbig.models import gpt, moe

E, K, D, M = 4, 2, 6, 5


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def _kernels(seed=0):
    r = np.random.default_rng(seed)
    return tuple(r.normal(size=s).astype(np.float32) * 0.5
                 for s in ((E, D, M), (E, D, M), (E, M, D)))


def _expert_np(x, j, kernels):
    gate, up, down = (np.float64(w) for w in kernels)
    g, u = x @ gate[j], x @ up[j]
    return (g / (1 + np.exp(-g)) * u) @ down[j]


def _route_np(logits, k, normalize):
    probs = _softmax(np.float64(logits))
    experts = np.argsort(-probs, -1, kind='stable')[..., :k]
    weights = np.take_along_axis(probs, experts, -1)
    if normalize:
        weights = weights / weights.sum(-1, keepdims=True)
    return probs, experts, weights


def _moe_np(x, experts, weights, kernels, capacity=None):
    """Per-row loop: first choices before second ones, in token order; past `capacity` a
    pair is dropped. x [b, t, d] -> (y, dropped [b, t])."""
    b, t, _ = x.shape
    y, dropped = np.zeros(x.shape), np.zeros((b, t))
    for row in range(b):
        used = np.zeros(E, int)
        for choice in range(experts.shape[-1]):
            for tok in range(t):
                j = experts[row, tok, choice]
                if capacity is not None and used[j] >= capacity:
                    dropped[row, tok] += 1
                    continue
                used[j] += 1
                y[row, tok] += weights[row, tok, choice] * _expert_np(np.float64(x[row, tok]),
                                                                      j, kernels)
    return y, dropped


@pytest.mark.parametrize('normalize', [True, False])
def test_route_is_softmax_top_k(normalize):
    logits = np.random.default_rng(1).normal(size=(3, 7, E)).astype(np.float32)
    probs, experts, weights = moe.route(jnp.asarray(logits), K, normalize)
    p, e, w = _route_np(logits, K, normalize)
    np.testing.assert_allclose(probs, p, atol=1e-6)
    np.testing.assert_array_equal(experts, e)
    np.testing.assert_allclose(weights, w, atol=1e-6)


def _inputs(b=3, t=9, seed=2):
    r = np.random.default_rng(seed)
    x = r.normal(size=(b, t, D)).astype(np.float32)
    _, experts, weights = _route_np(r.normal(size=(b, t, E)), K, True)
    return x, experts.astype(np.int32), weights.astype(np.float32)


@pytest.mark.parametrize('grouped', ['ragged_dot', 'blocks'])
def test_dropless_equals_a_per_token_loop(grouped):
    x, experts, weights = _inputs()
    kernels = _kernels()
    b, t, _ = x.shape
    got = moe.dropless(jnp.asarray(x.reshape(b * t, D)), jnp.asarray(experts.reshape(-1, K)),
                       jnp.asarray(weights.reshape(-1, K)), kernels, jnp.float32, grouped)
    want, _ = _moe_np(x, experts, weights, kernels)
    np.testing.assert_allclose(np.asarray(got).reshape(b, t, D), want, atol=1e-5)


@pytest.mark.parametrize('capacity', [2, 3, K * 9])
def test_capacity_drops_as_gshard_places(capacity):
    """Few slots drop the later pairs exactly as the loop does; k * t slots drop nothing and
    equal dropless."""
    x, experts, weights = _inputs()
    kernels = _kernels()
    y, dropped = moe.with_capacity(jnp.asarray(x), jnp.asarray(experts), jnp.asarray(weights),
                                   kernels, jnp.float32, capacity)
    want, want_dropped = _moe_np(x, experts, weights, kernels, capacity)
    np.testing.assert_allclose(y, want, atol=1e-5)
    np.testing.assert_array_equal(dropped, want_dropped)
    assert (want_dropped.sum() > 0) == (capacity < 9)


def test_dispatches_have_equal_gradients_to_a_dense_evaluation():
    """d/d(x, kernels, weights) of dropless and unlimited-capacity dispatch equal those of
    evaluating every expert on every token and weighting by the sparse routing."""
    x, experts, weights = _inputs(b=2, t=5)
    kernels = _kernels(3)
    r = jnp.asarray(np.random.default_rng(4).normal(size=x.shape).astype(np.float32))

    def dense(x, w, kernels):
        gate, up, down = kernels
        g = jnp.einsum('btd,edm->btem', x, gate)
        u = jnp.einsum('btd,edm->btem', x, up)
        out = jnp.einsum('btem,emd->bted', jax.nn.silu(g) * u, down)
        sparse = jnp.einsum('btk,btke->bte', w, jax.nn.one_hot(experts, E))
        return jnp.sum(jnp.einsum('bted,bte->btd', out, sparse) * r)

    def drop(x, w, kernels, grouped='ragged_dot'):
        y = moe.dropless(x.reshape(-1, D), experts.reshape(-1, K), w.reshape(-1, K), kernels,
                         jnp.float32, grouped)
        return jnp.sum(y.reshape(x.shape) * r)

    def blocks(x, w, kernels):
        return drop(x, w, kernels, 'blocks')

    def cap(x, w, kernels):
        return jnp.sum(moe.with_capacity(x, experts, w, kernels, jnp.float32, K * 5)[0] * r)

    args = (jnp.asarray(x), jnp.asarray(weights), kernels)
    want = jax.grad(dense, argnums=(0, 1, 2))(*args)
    for f in (drop, blocks, cap):
        got = jax.grad(f, argnums=(0, 1, 2))(*args)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, atol=1e-5)


def _balance_np(probs, chosen, w, group):
    """E * sum_e f_e P_e per group, mean over layers, token-weighted over groups."""
    layers, b = probs.shape[:2]
    k = chosen[0, 0, 0].sum()
    rows = [np.arange(b)] if group == 'batch' else [[i] for i in range(b)]
    total, count = 0.0, w.sum()
    for layer in range(layers):
        for r in rows:
            ww = w[r].reshape(-1)
            n = ww.sum()
            if n == 0:
                continue
            f = (chosen[layer, r].reshape(-1, E) * ww[:, None]).sum(0) / (k * n)
            p = (probs[layer, r].reshape(-1, E) * ww[:, None]).sum(0) / n
            total += E * (f * p).sum() * n / layers
    return total / count


@pytest.mark.parametrize('group', ['sequence', 'batch'])
def test_balance_and_z_loss_equal_numpy(group):
    r = np.random.default_rng(5)
    logits = r.normal(size=(2, 3, 6, E)) * 2
    probs, experts, _ = _route_np(logits, K, True)
    chosen = jax.nn.one_hot(experts, E).sum(-2)
    w = (r.random((3, 6)) < 0.7).astype(np.float32)
    w[1] = 0  # a row with no target: counts nothing
    got = moe_aux.balance(jnp.asarray(probs, jnp.float32), chosen, jnp.asarray(w), group)
    np.testing.assert_allclose(float(got), _balance_np(probs, np.asarray(chosen), w, group),
                               rtol=1e-5)
    stats = dict(probs=jnp.asarray(probs, jnp.float32), chosen=chosen,
                 log_z=jax.nn.logsumexp(jnp.asarray(logits, jnp.float32), -1),
                 dropped=jnp.zeros((2, 3, 6)))
    base = aggregate.Mean(jnp.float32(3.0) * w.sum(), jnp.float32(w.sum()))
    loss, metrics = moe_aux.add_to(base, {}, stats, jnp.asarray(w),
                                   dict(moe_balance=0.1, moe_z_loss=0.01,
                                        moe_balance_group=group))
    lse = np.log(np.exp(logits).sum(-1))
    z = (lse ** 2 * w[None]).sum() / 2 / w.sum()
    np.testing.assert_allclose(float(metrics['moe_z_loss']), z, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 3.0 + 0.1 * float(got) + 0.01 * z, rtol=1e-5)
    assert float(loss.count) == w.sum()
    load = (np.asarray(chosen) * w[None, ..., None]).sum((1, 2))
    np.testing.assert_allclose(float(metrics['moe_load_imbalance']),
                               np.mean(load.max(-1) / load.mean(-1)), rtol=1e-5)


@pytest.mark.parametrize('pairs, experts, want', [(8192, 8, 256), (40, 4, 16), (10**6, 8, 512)])
def test_block_size(pairs, experts, want):
    assert moe.block_size(pairs, experts) == want


def test_blocks_with_empty_and_lopsided_experts():
    """Blocks padded per expert: an expert with no rows, one with all but one."""
    r = np.random.default_rng(8)
    x = jnp.asarray(r.normal(size=(37, D)).astype(np.float32))
    kernels = _kernels(9)
    for sizes in ([0, 36, 1, 0], [37, 0, 0, 0], [9, 9, 9, 10]):
        sizes = jnp.asarray(sizes, jnp.int32)
        np.testing.assert_allclose(moe.swiglu_blocks(x, sizes, *kernels, jnp.float32),
                                   moe.swiglu_experts(x, sizes, *kernels, jnp.float32),
                                   atol=1e-5)


def test_perfect_balance_is_one():
    """Uniform router probabilities and an even assignment: the loss is exactly 1."""
    probs = jnp.full((1, 1, 4, E), 1 / E)
    chosen = jax.nn.one_hot(jnp.array([[[[0, 1], [2, 3], [0, 2], [1, 3]]]]), E).sum(-2)
    assert float(moe_aux.balance(probs, chosen, jnp.ones((1, 4)))) == pytest.approx(1.0)


def _model(**moe_fields):
    return gpt.Model(vocab_size=32, num_layers=2, num_heads=2, embed_dim=D * 2, mlp_dim=M,
                     moe={'experts': E, 'experts_per_token': K, **moe_fields})


def test_gpt_moe_dispatches_agree_and_sow_stats():
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 32, (2, 7)), jnp.int32)
    def forward(model, params):  # jitted: eager flax dispatches a MoE op by op, slowly
        return jax.jit(lambda p: model.apply({'params': p}, tokens,
                                             mutable=['intermediates']))(params)

    drop = _model()
    params = jax.jit(drop.init)(jax.random.PRNGKey(0), tokens)['params']
    out, sown = forward(drop, params)
    stats = moe_aux.stats_of(sown)
    assert stats['probs'].shape == (2, 2, 7, E) and float(stats['chosen'].sum()) == 2 * 14 * K
    unlimited = _model(dispatch='capacity', capacity_factor=float(E))
    np.testing.assert_allclose(forward(unlimited, params)[0], out, atol=1e-5)
    tight = _model(dispatch='capacity', capacity_factor=0.5)
    assert float(moe_aux.stats_of(forward(tight, params)[1])['dropped'].sum()) > 0
    dense = gpt.Model(vocab_size=32, num_layers=2, num_heads=2, embed_dim=D * 2, mlp_dim=M)
    _, sown = forward(dense, jax.jit(dense.init)(jax.random.PRNGKey(0), tokens)['params'])
    assert moe_aux.stats_of(sown) is None


@pytest.mark.parametrize('fields, match', [
    (dict(experts_per_token=5), 'experts_per_token'),
    (dict(dispatch='sparse'), 'dispatch'),
    (dict(capacity_factor=0.0, dispatch='capacity'), 'capacity_factor'),
    (dict(top_k=2), 'unknown key'),
])
def test_bad_moe_config_is_one_line(fields, match):
    with pytest.raises(ConfigError, match=match):
        _model(**fields).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def test_moe_with_a_gelu_mlp_is_refused():
    model = gpt.Model(vocab_size=32, num_layers=1, num_heads=2, embed_dim=12, mlp_dim=M,
                      mlp='gelu', moe={'experts': E})
    with pytest.raises(ValueError, match="experts are SwiGLU"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def test_batch_balance_group_is_refused_where_a_split_would_change_it():
    """'batch' balancing is one forward pass's statistic: refused under accumulation and
    pmap (one line), accepted alone; 'sequence' everywhere."""
    from jaxbig import defaults, losses

    config = ml_collections.ConfigDict(dict(
        model=defaults.gpt({}, moe=defaults.moe(experts=4)), loss=defaults.lm_loss(),
        optimizer=dict(grad_accum_steps=2), parallel=dict(strategy='mesh')))
    module = losses.get_loss_module('autoregressive')
    losses.check_accumulation(module, config)  # 'sequence'
    config.loss.moe_balance_group = 'batch'
    with pytest.raises(ConfigError, match="moe_balance_group='batch'.*grad_accum_steps=2"):
        losses.check_accumulation(module, config)
    config.optimizer.grad_accum_steps = 1
    losses.check_accumulation(module, config)
    config.parallel.strategy = 'pmap'
    with pytest.raises(ConfigError, match='pmap'):
        losses.check_accumulation(module, config)


def test_int8_quantization_scales_each_expert_per_output_channel():
    from jaxbig import quantize

    model = _model()
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0),
                                          jnp.zeros((1, 4), jnp.int32))['params'])
    q = quantize.quantize_params(params)
    gate = q['layers']['mlp']['experts']['gate']['kernel']  # [layers, E, d, m], scanned
    assert gate.scale.shape == (2, E, 1, M)  # per layer, expert and output feature
    np.testing.assert_allclose(gate.dequantize(), params['layers']['mlp']['experts']['gate'][
        'kernel'], atol=float(np.abs(gate.scale).max()))
    assert not isinstance(q['layers']['mlp']['router'], quantize.QTensor)  # routing kept


def test_training_an_moe_lm_lowers_its_loss_and_plots_the_load(tfds_dir, tmp_path):
    """`jaxbig train` of experiments/lm.py:experts=4 (dropless, aux losses on): the loss
    falls, the MoE metrics are logged every log step, moe_load.png is written."""
    from conftest import TINY_LM, metric_series, run_cli

    run_cli('train', '--workdir', str(tmp_path), '--config',
            'experiments/lm.py:experts=4,steps=24', *TINY_LM, '--config.train.log_every=4')
    loss = metric_series(tmp_path)
    assert loss[24] < loss[4] - 0.3, loss
    for key in ('moe_balance', 'moe_z_loss', 'moe_load_imbalance', 'moe_dropped',
                'moe_load_imbalance/layer_1'):
        assert len(metric_series(tmp_path, f'train/{key}')) == 6, key
    assert 1.0 <= metric_series(tmp_path, 'train/moe_balance')[24] < 2.0
    assert (tmp_path / 'moe_load.png').stat().st_size > 0


def test_active_parameters_and_flops_count_k_of_the_experts():
    """Mixtral-8x7B's published shape: 46.7 B parameters, 12.9 B active; FLOPs per token
    count the active weights (MaxText's rule with k + shared experts' MLPs and the router)."""
    shape = dict(gpt.SIZES['llama_8b'], vocab_size=32000, tie_embeddings=False)
    mixtral = gpt.Model(**shape, moe={'experts': 8, 'experts_per_token': 2})
    shapes = jax.eval_shape(lambda: mixtral.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 8), jnp.int32))['params'])
    assert round(gpt.count_params(shapes) / 1e9, 1) == 46.7
    assert round(gpt.active_params(mixtral, shapes) / 1e9, 1) == 12.9
    dense = gpt.Model(**shape)  # Mistral-7B's shape: the same per-token weights but k = 1
    d, m, layers = 4096, 14336, 32
    extra = layers * (3 * d * m + d * 8)  # a second expert's MLP and the router, per layer
    assert gpt.flops_per_token(mixtral, 4096) == pytest.approx(
        gpt.flops_per_token(dense, 4096) + 6 * extra)


def test_a_moe_student_distils_with_its_aux_losses():
    """Distillation adds a MoE student's balance and z-losses over the same targets."""
    from jaxbig.losses import distillation

    tokens = jnp.asarray(np.random.default_rng(9).integers(0, 32, (2, 9)), jnp.int32)
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
                 mask=jnp.asarray([[1.0] * 8, [1.0] * 3 + [0.0] * 5]))
    student = _model()
    params = jax.jit(student.init)(jax.random.PRNGKey(0), batch['inputs'])['params']
    teacher = gpt.Model(vocab_size=32, num_layers=1, num_heads=2, embed_dim=12, mlp_dim=M)
    t_params = jax.jit(teacher.init)(jax.random.PRNGKey(1), batch['inputs'])['params']
    def loss(balance, z):  # jitted (the coefficients are Python numbers the loss reads)
        return jax.jit(lambda p: distillation.loss_fn(
            student.apply, p, batch, {}, dict(moe_balance=balance, moe_z_loss=z), train=False,
            teacher=(teacher, t_params)))(params)

    with_aux, metrics = loss(0.1, 0.01)
    without, _ = loss(0.0, 0.0)
    assert float(with_aux.count) == float(without.count) == 11
    np.testing.assert_allclose(float(with_aux), float(without) + 0.1 * float(
        metrics['moe_balance']) + 0.01 * float(metrics['moe_z_loss']), rtol=1e-6)


def test_route_with_a_bias_chooses_by_it_and_weighs_by_the_probabilities():
    logits = np.random.default_rng(10).normal(size=(5, E)).astype(np.float32)
    bias = np.array([10.0, 0, 0, -10.0], np.float32)  # expert 0 always in, 3 never
    probs, experts, weights = moe.route(jnp.asarray(logits), K, False, jnp.asarray(bias))
    p = _softmax(np.float64(logits))
    want = np.argsort(-(p + bias), -1, kind='stable')[:, :K]
    np.testing.assert_array_equal(experts, want)
    np.testing.assert_allclose(weights, np.take_along_axis(p, want, -1), atol=1e-6)


def _bias_step(accum):
    """One update of a MoE GPT with bias_rate 0.01 (SGD, lr 0.1) on a 4-row batch with
    uneven masks; -> (router_bias before, after, the routing stats at the start, mask)."""
    from jaxbig import defaults, losses, optim, run
    from jaxbig import step as step_lib

    model = _model(bias_rate=0.01)
    r = np.random.default_rng(11)
    tokens = r.integers(0, 32, (4, 9)).astype(np.int32)
    mask = (np.arange(8)[None] < np.array([8, 2, 5, 1])[:, None]).astype(np.float32)
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=mask)
    opt = ml_collections.ConfigDict(defaults.optimizer(name='sgd', lr=0.1, schedule='constant'))
    tx, _ = optim.build_optimizer(opt, 10, moe_bias_rate=0.01)
    state = step_lib.init_fn(model, tx, (batch['inputs'][:1],), 0)()
    loss_cfg = ml_collections.ConfigDict(defaults.lm_loss())
    step = jax.jit(step_lib.make_train_step(
        model, losses.get_loss_module('autoregressive').loss_fn, loss_cfg, tx,
        accum_steps=accum, trainable=run.trainable_mask(opt, state.params)))
    _, sown = jax.jit(lambda p: model.apply({'params': p}, batch['inputs'],
                                            mutable=['intermediates']))(state.params)
    new, metrics = step(state, batch)
    before = state.params['layers']['mlp']['router_bias']
    return before, new.params['layers']['mlp']['router_bias'], moe_aux.stats_of(sown), mask


def test_balancing_bias_moves_by_the_sign_of_the_whole_updates_load():
    """DeepSeek-V3's rule on the whole update: b -= 0.01 * sign(load - mean load) per layer,
    counted over the valid targets; the same under accumulation (micro-batches of 2 rows)."""
    before, after, stats, mask = _bias_step(accum=1)
    load = np.einsum('lbte,bt->le', np.asarray(stats['chosen']), mask)  # [layers, E]
    want = np.asarray(before) - 0.01 * np.sign(load - load.mean(-1, keepdims=True))
    np.testing.assert_allclose(after, want, atol=1e-7)
    assert np.abs(np.asarray(after)).sum() > 0
    _, after_accum, _, _ = _bias_step(accum=2)
    np.testing.assert_array_equal(after_accum, after)
