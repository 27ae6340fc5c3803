"""The generic train step: gradient accumulation equals the full batch; donation-safe state."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxbig import defaults, losses
from jaxbig import models, optim
from jaxbig import step as step_lib
from jaxbig.losses import autoregressive


def _setup(accum):
    model = models.get_model('gpt', vocab_size=32, num_layers=1, num_heads=2, embed_dim=16,
                             mlp_dim=32)
    opt = ml_collections.ConfigDict(defaults.optimizer(
        name='sgd', lr=0.5, schedule='constant', momentum=0.0, clip_norm=0.0,
        grad_accum_steps=accum))
    tx, schedule = optim.build_optimizer(opt, 10)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, size=(8, 9)).astype(np.int32)
    batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'mask': np.ones((8, 8), np.float32)}
    state = jax.jit(step_lib.init_fn(model, tx, (batch['inputs'][:1],), seed=0))()
    loss_cfg = ml_collections.ConfigDict({'name': 'autoregressive', 'z_loss': 0.0})
    train_step = jax.jit(step_lib.make_train_step(model, autoregressive.loss_fn, loss_cfg, tx,
                                                  schedule, accum))
    return train_step, state, batch


def test_gradient_accumulation_equals_full_batch():
    outs = {}
    for accum in (1, 2, 4):
        train_step, state, batch = _setup(accum)
        new, metrics = train_step(state, batch)
        outs[accum] = (new.params, metrics)
    for accum in (2, 4):
        for a, b in zip(jax.tree.leaves(outs[1][0]), jax.tree.leaves(outs[accum][0])):
            np.testing.assert_allclose(a, b, atol=2e-6)
        np.testing.assert_allclose(outs[1][1]['loss'], outs[accum][1]['loss'], rtol=1e-6)
        np.testing.assert_allclose(outs[1][1]['grad_norm'], outs[accum][1]['grad_norm'], rtol=1e-5)


def test_step_counts_and_loss_falls():
    train_step, state, batch = _setup(1)
    losses = []
    for _ in range(20):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics['loss']))
    assert int(state.step) == 20
    assert losses[-1] < losses[0] - 0.5
    assert np.isfinite(float(metrics['learning_rate']))


def test_grad_norm_reads_the_trainable_parameters_only():
    """With a frozen part (as in a linear probe), train/grad_norm is the trainable gradients' norm —
    the one clipping uses — not the norm over every parameter."""
    _, _, batch = _setup(1)
    model = models.get_model('gpt', vocab_size=32, num_layers=1, num_heads=2, embed_dim=16,
                             mlp_dim=32)
    loss_cfg = ml_collections.ConfigDict({'name': 'autoregressive', 'z_loss': 0.0})
    opt = ml_collections.ConfigDict(defaults.optimizer(
        name='sgd', lr=0.5, schedule='constant', momentum=0.0, clip_norm=0.0,
        freeze=['(?!final_norm/).*']))
    tx, schedule = optim.build_optimizer(opt, 10)
    frozen = jax.jit(step_lib.init_fn(model, tx, (batch['inputs'][:1],), seed=0))()
    from jaxbig.run import trainable_mask
    trainable = trainable_mask(opt, frozen.params)
    assert sum(jax.tree.leaves(trainable)) == 1  # only the final norm's scale
    grads = jax.jit(jax.grad(lambda p: autoregressive.loss_fn(
        model.apply, p, batch, {}, loss_cfg)[0].value()))(frozen.params)
    step = jax.jit(step_lib.make_train_step(model, autoregressive.loss_fn, loss_cfg, tx,
                                            schedule, trainable=trainable))
    _, metrics = step(frozen, batch)
    head_norm = float(np.linalg.norm(np.asarray(grads['final_norm']['scale'])))
    all_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
    np.testing.assert_allclose(float(metrics['grad_norm']), head_norm, rtol=1e-5)
    assert all_norm > 2 * head_norm  # the frozen body's gradients would dominate


class _Encoder(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(8)(nn.tanh(nn.Dense(16)(x.reshape(x.shape[0], -1))))


class _TwoTower(nn.Module):
    @nn.compact
    def __call__(self, image, text, train=False):
        unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
        x = nn.Dense(8)(image.reshape(image.shape[0], -1))
        y = nn.Dense(8)(nn.Embed(20, 8)(text).mean(1))
        return {'image': unit(x), 'text': unit(y),
                'logit_scale': self.param('t', lambda k: jnp.float32(1.0)),
                'logit_bias': self.param('b', lambda k: jnp.float32(-1.0))}


@pytest.mark.parametrize('name,kind', [('contrastive', ''), ('multimodal', 'clip'),
                                       ('multimodal', 'siglip')])
def test_contrastive_accumulation_is_the_full_batch_objective(name, kind):
    """Gradient cache: with grad_accum_steps 2 or 4 every example still meets the whole
    batch's negatives — 3 updates give the accum-1 losses and params (float32 rounding),
    while the loss averaged over micro-batches (what plain accumulation computes) is another
    number."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 4, 4, 1)).astype(np.float32)
    if name == 'contrastive':
        model, batch = _Encoder(), {'view1': images, 'view2': images[::-1] + 0.1}
        cfg = {'name': name, 'temperature': 0.1}
    else:
        model = _TwoTower()
        batch = {'image': images, 'text': rng.integers(0, 20, size=(8, 5)).astype(np.int32)}
        cfg = {'name': name, 'kind': kind}
    cfg = ml_collections.ConfigDict(cfg)
    module = losses.get_loss_module(name)
    out = {}
    for accum in (1, 2, 4):
        opt = ml_collections.ConfigDict(defaults.optimizer(
            name='sgd', lr=0.5, schedule='constant', momentum=0.9, clip_norm=0.0,
            grad_accum_steps=accum))
        tx, schedule = optim.build_optimizer(opt, 10)
        example = module.model_inputs(jax.tree.map(lambda x: x[:1], batch))
        state = jax.jit(step_lib.init_fn(model, tx, example, seed=0))()
        train_step = jax.jit(step_lib.make_train_step(
            model, module.loss_fn, cfg, tx, schedule, accum,
            coupled=losses.coupled_parts(module)))
        history = []
        for _ in range(3):
            state, metrics = train_step(state, batch)
            history.append(float(metrics['loss']))
        out[accum] = history, state.params
    for accum in (2, 4):
        np.testing.assert_allclose(out[accum][0], out[1][0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(out[accum][1]), jax.tree.leaves(out[1][1])):
            np.testing.assert_allclose(a, b, atol=5e-6)
    params = jax.jit(step_lib.init_fn(model, optax.sgd(0.1), module.model_inputs(batch),
                                      seed=0))().params
    micro = [jax.tree.map(lambda x: x[j::2], batch) for j in range(2)]
    per_micro = [float(module.loss_fn(model.apply, params, mb, {}, cfg)[0]) for mb in micro]
    assert abs(np.mean(per_micro) - out[1][0][0]) > 1e-2  # the old objective differs
