"""jaxbig.losses.distillation against NumPy; a short distillation run beats the same student
trained from scratch (slow, through the CLI)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import TINY_LM, metric_series, run_cli
from jaxbig import losses
from jaxbig.aggregate import values
from jaxbig.config import ConfigError
from jaxbig.losses import distillation
from jaxbig.models import gpt

SMALL = dict(vocab_size=37, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=24)


def np_kl(student, teacher, mask, t):
    def log_softmax(x):
        x = np.asarray(x, np.float64) / t
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(teacher), log_softmax(student)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def test_kl_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 2, 5, 11)).astype(np.float32) * 3
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    for temp in (1.0, 2.0, 4.0):
        np.testing.assert_allclose(distillation.distillation_kl(s, t, mask, temp).value(),
                                   np_kl(s, t, mask, temp), rtol=1e-5)
    assert float(distillation.distillation_kl(t, t, mask, 2.0).value()) == pytest.approx(0, abs=1e-6)


@functools.cache
def _setup():
    model = gpt.Model(**SMALL)
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, SMALL['vocab_size'])
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens))['params']
    rng = np.random.default_rng(0)  # params from NumPy: model.init compiles slowly on CPU

    def draw(std):
        return jax.tree.map(lambda x: jnp.asarray(std * rng.normal(size=x.shape), x.dtype),
                            shapes)

    student, teacher = draw(0.1), draw(0.3)  # the teacher sharper
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
                 mask=jnp.ones((2, 8)).at[0, 6:].set(0))
    return model, student, teacher, batch


def test_loss_mixes_soft_and_hard_and_teacher_is_frozen():
    model, student, teacher, batch = _setup()
    cfg = ml_collections.ConfigDict(dict(name='distillation', temperature=2.0, alpha=0.3))

    def fn(s_params, t_params):
        return values(distillation.loss_fn(model.apply, s_params, batch, {}, cfg, train=False,
                                           teacher=(model, t_params)))

    @jax.jit
    def run(s_params, t_params):  # one compilation: eager scanned models are slow
        grads = jax.grad(lambda s, t: fn(s, t)[0], argnums=(0, 1))(s_params, t_params)
        logits = [model.apply({'params': p}, batch['inputs']) for p in (s_params, t_params)]
        return fn(s_params, t_params), grads, logits

    (loss, metrics), (s_grads, t_grads), (s_logits, t_logits) = run(student, teacher)
    kl = np_kl(s_logits, t_logits, np.asarray(batch['mask']), 2.0)
    logp = jax.nn.log_softmax(np.asarray(s_logits, np.float64))
    nll = -np.take_along_axis(logp, np.asarray(batch['targets'])[..., None], -1)[..., 0]
    hard = (nll * batch['mask']).sum() / batch['mask'].sum()
    np.testing.assert_allclose(metrics['kl'], kl, rtol=1e-4)
    np.testing.assert_allclose(metrics['loss'], hard, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.3 * 4 * kl + 0.7 * hard, rtol=1e-4)
    # stop_gradient: no gradient reaches the teacher
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(t_grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(s_grads))


def test_bind_needs_a_teacher_workdir(tmp_path):
    module = losses.get_loss_module('distillation')
    with pytest.raises(ConfigError, match='loss.teacher'):
        losses.bind(module, ml_collections.ConfigDict(dict(teacher='', alpha=0.5)))
    with pytest.raises(ConfigError, match='no config.json'):
        losses.bind(module, ml_collections.ConfigDict(dict(teacher=str(tmp_path))))


STUDENT = ['--config.model.num_layers=1', '--config.model.embed_dim=32',
           '--config.model.num_heads=2', '--config.model.mlp_dim=64']
COMMON = ['--config.data.seq_len=32', '--config.train.batch_size=16',
          '--config.train.log_every=5', '--config.train.eval_every=0',
          '--config.evals.val.num_examples=128']


@pytest.mark.slow
def test_distilled_student_beats_scratch(tfds_dir, tmp_path):
    teacher, student, scratch = tmp_path / 'teacher', tmp_path / 'student', tmp_path / 'scratch'
    run_cli('train', '--workdir', str(teacher), '--config', 'experiments/lm.py:steps=300',
            *TINY_LM, '--config.train.log_every=50', timeout=900)
    steps = 'steps=100'
    run_cli('train', '--workdir', str(student), '--config',
            f'experiments/distill.py:teacher={teacher},{steps}', *STUDENT, *COMMON, timeout=900)
    run_cli('train', '--workdir', str(scratch), '--config', f'experiments/lm.py:{steps}',
            *STUDENT, *COMMON, timeout=900)
    kl = metric_series(student, 'train/kl')
    assert np.mean([kl[s] for s in (90, 95, 100)]) < 0.5 * np.mean([kl[s] for s in (5, 10)]), kl
    distilled, baseline = (metric_series(w, 'val/loss')[100] for w in (student, scratch))
    print(f'val/loss distilled {distilled:.4f} scratch {baseline:.4f}; '
          f'kl {kl[5]:.3f} -> {kl[100]:.3f}')
    assert distilled < baseline, (distilled, baseline)
