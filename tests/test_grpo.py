"""GRPO: the objective against TRL's own GRPOTrainer loss (token-level 'dapo'
normalisation, clipped ratio, k3 KL) and its group advantages (TRL's nanstd), the reward,
rollouts that depend on (key, row) only, completion log-probs equal to an unpadded forward,
the prompts pipeline, and `experiments/grpo.py` from an SFT run through the CLI, stopped
and resumed exactly."""
import collections
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from conftest import REPO, metric_series, run_cli

from jaxbig import config as config_lib
from jaxbig import defaults, models
from jaxbig.config import ConfigError
from jaxbig.data.pipelines import prompts as prompts_lib
from jaxbig.losses import grpo

RNG = np.random.default_rng(0)


def test_objective_equals_trl_dapo_loss():
    """TRL's GRPOTrainer._compute_loss on given per-token log-probs (a stub returns them),
    old and reference log-probs and advantages == the Mean of per_token_loss."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    n, length = 6, 7
    mask = np.zeros((n, length), np.float32)
    for r in range(n):
        mask[r, :RNG.integers(1, length + 1)] = 1
    logp = -RNG.gamma(2.0, 0.5, (n, length)).astype(np.float32)
    old = logp + RNG.normal(0, 0.3, (n, length)).astype(np.float32)  # reused samples: clipped
    ref = logp + RNG.normal(0, 0.5, (n, length)).astype(np.float32)
    adv = RNG.normal(0, 1, n).astype(np.float32)
    for beta in (0.0, 0.04):
        metrics = collections.defaultdict(lambda: collections.defaultdict(list))
        args = types.SimpleNamespace(delta=None, use_bias_correction_kl=False,
                                     steps_per_generation=1)
        me = types.SimpleNamespace(
            top_entropy_quantile=1.0, off_policy_mask_threshold=None,
            importance_sampling_level='token', beta=beta, loss_type='dapo', epsilon_low=0.2,
            _entropy_bonus_enabled=False,
            epsilon_high=0.2, args=args, use_vllm=False, aux_loss_enabled=False,
            model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
            accelerator=types.SimpleNamespace(num_processes=1, gather=lambda x: x,
                                              gather_for_metrics=lambda x: x,
                                              reduce=lambda x, reduction: x),
            _metrics=metrics,
            _get_per_token_logps_and_entropies=lambda *a, **k: (
                torch.tensor(logp, requires_grad=True), torch.zeros(n, length), None))
        inputs = dict(prompt_ids=torch.zeros((n, 2), dtype=torch.long),
                      prompt_mask=torch.ones((n, 2), dtype=torch.long),
                      completion_ids=torch.zeros((n, length), dtype=torch.long),
                      completion_mask=torch.tensor(mask, dtype=torch.long),
                      advantages=torch.tensor(adv), old_per_token_logps=torch.tensor(old),
                      ref_per_token_logps=torch.tensor(ref),
                      num_items_in_batch=torch.tensor(mask.sum()))
        want = float(GRPOTrainer._compute_loss(me, None, inputs).detach())
        per_token = grpo.per_token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref),
                                        jnp.asarray(adv), epsilon=0.2, beta=beta)
        got = float((per_token * mask).sum() / mask.sum())
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_group_advantages_equal_trl():
    from trl.trainer.utils import nanstd

    rewards = RNG.random((5, 4)).astype(np.float32)
    rewards[2] = 0.5  # no signal: zero advantages
    adv, std = grpo.group_advantages(jnp.asarray(rewards))
    t = torch.tensor(rewards)
    want = (t - t.mean(1, keepdim=True)) / (nanstd(t, dim=1, keepdim=True) + 1e-4)
    np.testing.assert_allclose(np.asarray(adv), want.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(adv)[2] == 0) and float(std[2]) == 0


def test_rewards():
    eos = 0
    answer = np.array([[32, 102, 111, eos, -1]] * 5)  # ' fo' + eos
    completion = np.array([[32, 102, 111, eos, eos],   # exact
                           [32, 102, 120, eos, eos],   # prefix ' f' of ' fo': 2/3
                           [32, 102, 111, 111, eos],   # the name, then more: 3 of 4 said
                           [120, 102, 111, eos, eos],  # wrong first token
                           [32, 102, 111, eos, eos]])  # the name, cut before its eos: 3/3
    lengths = np.array([4, 4, 5, 4, 3])
    reward, exact = grpo.rewards(jnp.asarray(completion), jnp.asarray(lengths),
                                 jnp.asarray(answer))
    np.testing.assert_allclose(np.asarray(reward), [1.0, 1 / 3, 3 / 8, 0.0, 0.5], rtol=1e-6)
    assert np.asarray(exact).tolist() == [True, False, False, False, False]
    binary = grpo.rewards(jnp.asarray(completion), jnp.asarray(lengths), jnp.asarray(answer),
                          'exact')[0]
    np.testing.assert_array_equal(np.asarray(binary), [1, 0, 0, 0, 0])


GPT_TINY = {k: v for k, v in defaults.gpt(dict(num_layers=2, num_heads=2, embed_dim=16,
                                                mlp_dim=32), scan_layers=False,
                                           remat='none').items() if k != 'name'}
CONFIG = ml_collections.ConfigDict(dict(group_size=3, max_new_tokens=5, temperature=1.0,
                                        eos_id=0, reward='prefix', epsilon=0.2, beta=0.0))


def prompt_batch(lengths=(3, 7, 1, 5), width=8):
    prompt = np.zeros((len(lengths), width), np.int32)
    positions = np.full((len(lengths), width), -1, np.int32)
    for r, n in enumerate(lengths):
        prompt[r, width - n:] = RNG.integers(1, 256, n)
        positions[r, width - n:] = np.arange(n)
    answer = np.full((len(lengths), 4), -1, np.int32)
    answer[:, :3] = [32, 97, 0]
    return dict(prompt=prompt, prompt_positions=positions, answer=answer)


@pytest.fixture(scope='module')
def policy():
    model = models.get_model('gpt', **GPT_TINY)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32),
                                 train=False)['params'])
    return model, params


def test_rollouts_depend_on_the_row_not_the_batch(policy):
    model, params = policy
    batch = prompt_batch()
    key = jax.random.PRNGKey(3)
    whole = grpo.rollouts(model, params, dict(batch, row_ids=np.arange(4)), key, CONFIG)
    part = grpo.rollouts(model, params, dict(jax.tree.map(lambda x: x[2:], batch),
                                             row_ids=np.arange(2, 4)), key, CONFIG)
    np.testing.assert_array_equal(whole[2][6:], part[2])  # rows 2, 3: 3 samples each
    np.testing.assert_array_equal(whole[3][6:], part[3])
    other = grpo.rollouts(model, params, dict(batch, row_ids=np.arange(4)),
                          jax.random.PRNGKey(4), CONFIG)
    assert not np.array_equal(whole[2], other[2])
    g = np.asarray(whole[2]).reshape(4, 3, -1)
    assert any(not np.array_equal(g[r, 0], g[r, 1]) for r in range(4))  # samples differ


def test_completion_logps_equal_an_unpadded_forward(policy):
    model, params = policy
    batch = prompt_batch()
    completion = RNG.integers(1, 256, (4, 5)).astype(np.int32)
    got = jax.jit(grpo.completion_logps, static_argnums=(0, 5))(
        model.apply, params, jnp.asarray(batch['prompt']), jnp.asarray(batch['prompt_positions']),
        jnp.asarray(completion), False)
    # each row alone, unpadded, right-filled to one width (causal: the fill changes nothing
    # before it), in one forward pass
    lengths = (3, 7, 1, 5)
    alone = np.ones((4, 8 + 5), np.int32)
    for r, n in enumerate(lengths):
        alone[r, :n + 5] = np.concatenate([batch['prompt'][r, 8 - n:], completion[r]])
    logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(
        params, jnp.asarray(alone))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for r, n in enumerate(lengths):
        want = np.take_along_axis(logp[r, n - 1:n + 4], completion[r][:, None], -1)[:, 0]
        np.testing.assert_allclose(np.asarray(got[r]), want, rtol=1e-4, atol=1e-5)


def test_loss_counts_completion_tokens_and_only_real_prompts(policy):
    model, params = policy
    batch = dict(prompt_batch(), row_ids=np.arange(4))
    loss, m = grpo.loss_fn(model.apply, params, batch, {'examples': jax.random.PRNGKey(1)},
                           CONFIG)
    assert float(m['completions']) == 12 and 0 <= float(m['reward']) <= 1
    assert float(loss.count) == pytest.approx(float(m['completion_length']) * 12)
    padded = dict(batch, example_mask=np.array([1, 1, 0, 0], np.float32))
    _, half = grpo.loss_fn(model.apply, params, padded, {'examples': jax.random.PRNGKey(1)},
                           CONFIG)
    assert float(half['completions']) == 6


def test_prompts_pipeline(tfds_dir):
    cfg = ml_collections.ConfigDict(dict(pipeline='prompts', name='pystdlib', data_dir=tfds_dir,
                                         task='name', prompt_len=96, answer_len=16,
                                         tokenizer='bytes', eos_id=-1))
    prompts_lib.prepare(cfg)
    pipe = prompts_lib.build_pipeline(cfg, split='train', batch_size=4, seed=0)
    batch = pipe.get_batch(2)
    assert batch['prompt'].shape == (4, 96) and batch['answer'].shape == (4, 16)
    for r in range(4):
        real = batch['prompt_positions'][r] >= 0
        assert real[-1] and np.all(np.diff(real.astype(int)) >= 0)  # left-padded
        text = bytes(batch['prompt'][r][real].tolist()).decode()
        answer = batch['answer'][r][batch['answer'][r] >= 0]
        assert text.endswith('# name:') and answer[-1] == 0 and answer[0] == ord(' ')
    with pytest.raises(ConfigError, match='prompt_len'):
        prompts_lib.build_pipeline(dict(cfg, prompt_len=0), split='train', batch_size=4, seed=0)


def test_config_errors(sft_run):
    load = lambda arg: config_lib.load(os.path.join(REPO, 'experiments/grpo.py') + arg)  # noqa
    with pytest.raises(ConfigError, match='init=RUN'):
        load('')
    cfg = load(f':init={sft_run}')
    assert cfg.loss.reference == sft_run and cfg.loss.eos_id == 0
    cfg.loss.group_size = 1
    with pytest.raises(ConfigError, match='group_size'):
        grpo.check(cfg)
    cfg.loss.group_size = 4
    cfg.loss.reference = ''
    with pytest.raises(ConfigError, match='loss.reference'):
        grpo.check(cfg)


GRPO_ARGS = ['--config.train.log_every=2', '--config.evals.gen.num_examples=4',
             '--config.evals.val.num_examples=4', '--config.optimizer.lr=3e-3',
             '--config.optimizer.warmup_steps=1', '--config.optimizer.decay_steps=4']


def test_grpo_cli_trains_and_resumes_exactly(sft_run, tmp_path):
    spec = (f'experiments/grpo.py:init={sft_run},steps=4,prompts=4,group=4,max_new_tokens=8,'
            'prompt_len=128,answer_len=12')
    ref, stopped = str(tmp_path / 'ref'), str(tmp_path / 'stopped')
    run_cli('train', '--config', spec, '--workdir', ref, *GRPO_ARGS)
    run_cli('train', '--config', spec, '--workdir', stopped, *GRPO_ARGS,
            '--config.train.steps=2')
    run_cli('train', '--config', spec, '--workdir', stopped, *GRPO_ARGS)
    for key in ('train/reward', 'train/kl', 'train/loss', 'val/reward'):
        want, got = metric_series(ref, key), metric_series(stopped, key)
        assert sorted(got) == sorted(want) and want, key
        np.testing.assert_allclose([got[s] for s in want], list(want.values()), atol=1e-6,
                                   err_msg=key)
    assert metric_series(ref, 'train/completions')[4] == 16
    assert 0 < metric_series(ref, 'train/completion_length')[4] <= 8


def test_reward_rises_on_a_learnable_task():
    """A tiny-vocabulary GPT learns, from its own samples alone, to answer '3 3' + eos
    (reward 'prefix'): the mean reward of fresh rollouts rises from ~0 to near 1 (the exact
    answer, eos included) within 80 updates."""
    import optax

    cfg = dict(GPT_TINY, vocab_size=8)
    model = models.get_model('gpt', **cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32),
                                 train=False)['params'])
    config = ml_collections.ConfigDict(dict(CONFIG, group_size=8, max_new_tokens=4, beta=0.0))
    batch = dict(prompt=np.tile([[1, 2, 5, 6]], (4, 1)).astype(np.int32),
                 prompt_positions=np.tile(np.arange(4), (4, 1)).astype(np.int32),
                 answer=np.tile([[3, 0]], (4, 1)).astype(np.int32), row_ids=np.arange(4))
    tx = optax.adam(1e-2)

    @jax.jit
    def update(params, opt, step):
        key = {'examples': jax.random.fold_in(jax.random.PRNGKey(9), step)}
        def loss(p):
            value, metrics = grpo.loss_fn(model.apply, p, batch, key, config)
            return value.value(), metrics

        (_, m), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, m['reward'].value()

    opt, rewards = tx.init(params), []
    for step in range(80):
        params, opt, reward = update(params, opt, step)
        rewards.append(float(reward))
    assert np.mean(rewards[:5]) < 0.2 and np.mean(rewards[-5:]) > 0.8, rewards
