"""Preference optimisation: the losses against TRL's own code on the same log-probabilities
(DPO and IPO through DPOTrainer's loss, cDPO and SimPO through CPOTrainer's, ORPO's odds
ratio through ORPOTrainer's), the per-response log-probs against NumPy, the reference
model (a separate forward of the reference run; LoRA adapters off = the base model), the
embedded pairs and the JSONL / Parquet reader with its one-line refusals, and real
`experiments/dpo.py` runs through the CLI (SFT -> DPO: the loss falls from log 2)."""
import collections
import gzip
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from conftest import REPO, SFT_TINY, metric_series, run_cli

from jaxbig import config as config_lib
from jaxbig import defaults, lora, models
from jaxbig import run as run_lib
from jaxbig.config import ConfigError
from jaxbig.data.builders import preference_task
from jaxbig.data.pipelines import preference as pipeline
from jaxbig.losses import preference

RNG = np.random.default_rng(0)


def random_pairs(b=6, length=9):
    """Per-token log-probs [2b, L] (zero off the completion mask) and the mask, chosen rows
    then rejected ones, with uneven response lengths (1..L tokens)."""
    mask = np.zeros((2 * b, length), np.float32)
    for r in range(2 * b):
        n = RNG.integers(1, length + 1)
        start = RNG.integers(0, length - n + 1)
        mask[r, start:start + n] = 1
    logps = -RNG.gamma(2.0, 0.7, (2 * b, length)).astype(np.float32) * mask
    return logps, mask


# ------------------------------------------------------------------------ TRL's losses

def trl_dpo(loss_type, per_token, mask, ref_sums, beta):
    """TRL's DPOTrainer._compute_loss on given per-token log-probs (a stub model returns
    them; reference log-probs precomputed): (loss, its logged metrics)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    b = per_token.shape[0] // 2
    full_mask = torch.tensor(np.pad(mask, ((0, 0), (1, 0))))  # completion_mask [2b, L+1]
    out = types.SimpleNamespace(
        log_probs=torch.tensor(per_token), entropy=torch.zeros(per_token.shape),
        mean_logits=torch.zeros(per_token.shape), is_top1=torch.zeros(per_token.shape, dtype=bool))
    metrics = collections.defaultdict(lambda: collections.defaultdict(list))
    me = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type='reverse_kl', loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0,
        accelerator=types.SimpleNamespace(device='cpu', gather_for_metrics=lambda x: x,
                                          gather=lambda x: x),
        _metrics=metrics, _total_train_tokens=0, _tp_size=1)
    model = lambda **kwargs: out  # noqa: E731
    inputs = {'input_ids': torch.zeros(full_mask.shape, dtype=torch.long),
              'attention_mask': torch.ones(full_mask.shape, dtype=torch.long),
              'completion_mask': full_mask,
              'ref_chosen_logps': torch.tensor(ref_sums[:b]),
              'ref_rejected_logps': torch.tensor(ref_sums[b:])}
    loss = DPOTrainer._compute_loss(me, model, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in metrics['train'].items()}


def jaxbig_pairs(kind, per_token, mask, ref_sums=None, **kw):
    b = per_token.shape[0] // 2
    sums, lengths = per_token.sum(1), mask.sum(1)
    ref = None if ref_sums is None else (ref_sums[:b], ref_sums[b:])
    return preference.pair_losses(kind, (sums[:b], sums[b:]), ref, (lengths[:b], lengths[b:]),
                                  **kw)


@pytest.mark.parametrize('kind,trl_type', [('dpo', 'sigmoid'), ('ipo', 'ipo')])
def test_dpo_and_ipo_equal_trl(kind, trl_type):
    per_token, mask = random_pairs()
    ref = per_token.sum(1) + RNG.normal(0, 2, per_token.shape[0]).astype(np.float32)
    for beta in (0.1, 0.5):
        want, logged = trl_dpo(trl_type, per_token, mask, ref, beta)
        loss, chosen, rejected, _ = jaxbig_pairs(kind, per_token, mask, ref, beta=beta)
        np.testing.assert_allclose(float(jnp.mean(loss)), want, rtol=1e-5)
        np.testing.assert_allclose(float(jnp.mean(chosen)), logged['rewards/chosen'], rtol=1e-5)
        np.testing.assert_allclose(float(jnp.mean(rejected)), logged['rewards/rejected'],
                                   rtol=1e-5)
        np.testing.assert_allclose(float(jnp.mean(chosen > rejected)),
                                   logged['rewards/accuracies'])


def test_cdpo_and_simpo_equal_trl_cpo():
    """cDPO is the CPO sigmoid loss of the log-ratios (policy - reference); SimPO is CPO's
    'simpo' on the length-averaged log-probs."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    per_token, mask = random_pairs()
    b = per_token.shape[0] // 2
    sums, lengths = per_token.sum(1), mask.sum(1)
    ref = sums + RNG.normal(0, 2, 2 * b).astype(np.float32)
    cpo = types.SimpleNamespace(alpha=0.0, beta=0.2, label_smoothing=0.15, simpo_gamma=0.7,
                                accelerator=types.SimpleNamespace(device='cpu'))
    cpo.loss_type = 'sigmoid'
    want = CPOTrainer.cpo_loss(cpo, torch.tensor(sums[:b] - ref[:b]),
                               torch.tensor(sums[b:] - ref[b:]))[0]
    got = jaxbig_pairs('dpo', per_token, mask, ref, beta=0.2, label_smoothing=0.15)[0]
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5)
    cpo.loss_type = 'simpo'
    avg = sums / lengths
    want, chosen, rejected = CPOTrainer.cpo_loss(cpo, torch.tensor(avg[:b]),
                                                 torch.tensor(avg[b:]))
    got = jaxbig_pairs('simpo', per_token, mask, beta=0.2, label_smoothing=0.15, gamma=0.7)
    np.testing.assert_allclose(np.asarray(got[0]), want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got[1]), chosen.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got[2]), rejected.numpy(), rtol=1e-5)


def test_orpo_equals_trl_odds_ratio_plus_nll():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    per_token, mask = random_pairs()
    b = per_token.shape[0] // 2
    avg = per_token.sum(1) / mask.sum(1)
    me = types.SimpleNamespace(beta=0.25, accelerator=types.SimpleNamespace(device='cpu'))
    ratio_loss, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(
        me, torch.tensor(avg[:b]), torch.tensor(avg[b:]))
    loss, c, r, nll = jaxbig_pairs('orpo', per_token, mask, beta=0.25)
    np.testing.assert_allclose(np.asarray(nll), -avg[:b], rtol=1e-6)
    # TRL: loss = mean NLL - mean(beta * log sigmoid(log odds)); per pair here
    np.testing.assert_allclose(np.asarray(loss), -avg[:b] - ratio_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(c), chosen.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r), rejected.numpy(), rtol=1e-5)
    certain = preference.pair_losses('orpo', (jnp.zeros(1), jnp.full(1, -2.0)), None,
                                     (jnp.ones(1), jnp.ones(1)), beta=0.1)[0]
    assert np.isfinite(np.asarray(certain)).all()  # a chosen response of probability 1


def test_response_logps_against_numpy():
    logits = RNG.normal(0, 2, (3, 5, 7)).astype(np.float32)
    targets = RNG.integers(0, 7, (3, 5))
    mask = (RNG.random((3, 5)) < 0.6).astype(np.float32)
    total, length = preference.response_logps(jnp.asarray(logits), jnp.asarray(targets),
                                              jnp.asarray(mask))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = (np.take_along_axis(logp, targets[..., None], -1)[..., 0] * mask).sum(1)
    np.testing.assert_allclose(np.asarray(total), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(length), mask.sum(1))


def test_loss_counts_pairs_and_skips_padding_rows():
    """An evaluator's padding rows (example_mask 0) count nothing; every metric is a Mean
    over the real pairs."""
    cfg = GPT_TINY
    model = models.get_model('gpt', **cfg)
    batch = tiny_batch(4)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), batch['chosen_inputs'][:1],
                                 train=False)['params'])
    config = ml_collections.ConfigDict(dict(type='simpo', beta=2.0, gamma=0.5))
    loss = jax.jit(lambda p, b: preference.loss_fn(model.apply, p, b, None, config,
                                                   train=False)[1])
    full = loss(params, batch)
    padded = dict(jax.tree.map(lambda x: np.concatenate([x, x[:2]]), batch),
                  example_mask=np.array([1, 1, 1, 1, 0, 0], np.float32))
    got = loss(params, padded)
    assert float(got['pairs']) == 4
    for k in full:
        np.testing.assert_allclose(float(got[k]), float(full[k]), rtol=1e-6, err_msg=k)


# ------------------------------------------------------------------------- the reference

GPT_TINY = {k: v for k, v in defaults.gpt(dict(num_layers=2, num_heads=2, embed_dim=16,
                                                mlp_dim=32), scan_layers=False,
                                           remat='none').items() if k != 'name'}


def tiny_batch(b, seq=12):
    batch = {}
    for side in ('chosen', 'rejected'):
        tokens = RNG.integers(1, 256, (b, seq + 1)).astype(np.int32)
        mask = np.zeros((b, seq), np.float32)
        for r in range(b):
            mask[r, RNG.integers(2, seq // 2):RNG.integers(seq // 2 + 1, seq + 1)] = 1
        batch.update({f'{side}_inputs': tokens[:, :-1], f'{side}_targets': tokens[:, 1:],
                      f'{side}_mask': mask})
    return batch


def test_adapters_off_reference_is_the_base_model():
    base = models.get_model('gpt', **GPT_TINY)
    wrapped = lora.wrap(base, ml_collections.ConfigDict(dict(
        targets=['.*attn/(query|value)/kernel'], rank=2, alpha=4.0)))
    batch = tiny_batch(3)
    params = nn.unbox(wrapped.init(jax.random.PRNGKey(1), batch['chosen_inputs'][:1],
                                   train=False)['params'])
    params = dict(params, lora=jax.tree.map(lambda x: x + 0.3, params['lora']))  # B != 0
    config = ml_collections.ConfigDict(dict(type='dpo', beta=0.1, reference='adapters_off'))
    bound = preference.bind(config)
    _, m = jax.jit(lambda p: bound(wrapped.apply, p, batch, None, config, train=False))(params)
    no_adapters = {k: v for k, v in params.items() if k != lora.KEY}
    want = jax.jit(lambda p: preference.pair_logps(base.apply, p, batch, None, False)[0])(
        no_adapters)
    mine = jax.jit(lambda p: preference.pair_logps(wrapped.apply, p, batch, None, False)[0])(params)
    assert not np.allclose(mine[0], want[0])  # the adapters do change the policy
    np.testing.assert_allclose(float(m['rewards/chosen']),
                               0.1 * float(jnp.mean(mine[0] - want[0])), rtol=1e-5)


def test_reference_run_is_a_separate_forward_of_that_run(sft_run):
    ref = run_lib.load_run(sft_run)
    batch = tiny_batch(3)
    config = ml_collections.ConfigDict(dict(type='dpo', beta=0.5, reference=sft_run))
    bound = preference.bind(config)
    other = nn.unbox(ref.model.init(jax.random.PRNGKey(5), batch['chosen_inputs'][:1],
                                    train=False)['params'])  # a policy, not the reference
    metrics = jax.jit(lambda p: bound(ref.model.apply, p, batch, None, config, train=False)[1])
    logps = jax.jit(lambda p: preference.pair_logps(ref.model.apply, p, batch, None, False)[0])
    m = metrics(other)
    (ref_c, ref_r), (pol_c, pol_r) = logps(ref.params), logps(other)
    np.testing.assert_allclose(float(m['rewards/chosen']),
                               0.5 * float(jnp.mean(pol_c - ref_c)), rtol=1e-5)
    np.testing.assert_allclose(float(m['rewards/rejected']),
                               0.5 * float(jnp.mean(pol_r - ref_r)), rtol=1e-5)
    same = metrics(ref.params)
    np.testing.assert_allclose(float(same['loss']), np.log(2), rtol=1e-6)  # policy = reference


# ------------------------------------------------------------------------------- the data

def test_embedded_pairs_take_another_name_from_the_same_file():
    examples = [('a.py', 1, 'p1', ' f'), ('a.py', 5, 'p2', ' g'), ('a.py', 9, 'p3', ' f'),
                ('b.py', 1, 'p4', ' h'), ('c.py', 2, 'p5', ' k')]
    pairs = preference_task.make_pairs(examples)
    assert [(w, c, r) for w, _, c, r in pairs] == [
        ('a.py:1', ' f', ' g'), ('a.py:5', ' g', ' f'), ('a.py:9', ' f', ' g'),
        ('b.py:1', ' h', ' f'),  # alone in its file: half the split away
        ('c.py:2', ' k', ' g')]
    assert preference_task.make_pairs([('a.py', 1, 'p', ' f')]) == []


def data_config(tfds_dir, **overrides):
    return ml_collections.ConfigDict({**defaults.preference_data('name', 128),
                                      'data_dir': tfds_dir, **overrides})


def test_pipeline_rows_mask_responses_and_share_the_prompt(tfds_dir):
    cfg = data_config(tfds_dir)
    pipeline.prepare(cfg)
    pipe = pipeline.build_pipeline(cfg, split='train', batch_size=4, seed=3)
    batch = pipe.get_batch(5)
    again = pipeline.build_pipeline(cfg, split='train', batch_size=4, seed=3).get_batch(5)
    jax.tree.map(np.testing.assert_array_equal, batch, again)  # a function of (seed, i)
    for r in range(4):
        c_first = int(np.argmax(batch['chosen_mask'][r]))
        r_first = int(np.argmax(batch['rejected_mask'][r]))
        assert c_first == r_first > 0  # the same prompt, then the responses
        np.testing.assert_array_equal(batch['chosen_inputs'][r, :c_first + 1],
                                      batch['rejected_inputs'][r, :r_first + 1])
        chosen = bytes(batch['chosen_targets'][r][batch['chosen_mask'][r] > 0].tolist())
        rejected = bytes(batch['rejected_targets'][r][batch['rejected_mask'][r] > 0].tolist())
        assert chosen.endswith(b'\0') and rejected.endswith(b'\0') and chosen != rejected
    val = pipeline.build_pipeline(cfg, split='validation', batch_size=8, seed=0,
                                  one_pass=True, num_examples=12)
    assert val.num_batches == 2 and val.get_batch(1)['example_mask'].tolist() == [1] * 4 + [0] * 4
    prompt, reference = val.generation_examples(1)[0]
    assert reference.startswith(' ') and bytes(prompt.tolist()).endswith(b'# name:')


def write_jsonl(path, records, opener=open):
    with opener(path, 'wt') as f:
        for r in records:
            f.write(json.dumps(r) + '\n')
    return str(path)


PAIRS = [dict(prompt=f'Q{i}: 2+{i}=', chosen=f' {2 + i}', rejected=f' {3 + i}') for i in range(40)]


def test_files_jsonl_parquet_and_splits(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / 'a.jsonl', PAIRS[:20])
    write_jsonl(tmp_path / 'b.jsonl.gz', PAIRS[20:30], opener=gzip.open)
    pq.write_table(pa.Table.from_pylist(PAIRS[30:]), tmp_path / 'c.parquet')
    cfg = data_config('', name='files', path=str(tmp_path), splits='validation=0.25', seq_len=16)
    train = pipeline.build_pipeline(cfg, split='train', batch_size=30, seed=0)
    val = pipeline.build_pipeline(cfg, split='validation', batch_size=10, seed=0)
    assert len(train.examples) == 30 and len(val.examples) == 10
    texts = {bytes(p.tolist()).decode() + ref for (p, _), ref in
             zip(train.examples + val.examples, train.references + val.references)}
    assert texts == {p['prompt'] + p['chosen'] for p in PAIRS}
    by_file = pipeline.build_pipeline(
        data_config('', name='files', path=str(tmp_path), seq_len=16,
                    splits='train=*.jsonl*,validation=*.parquet'), split='validation',
        batch_size=2, seed=0)
    assert sorted(by_file.references) == sorted(p['chosen'] for p in PAIRS[30:])


@pytest.mark.parametrize('record,message', [
    (dict(prompt='a', chosen='b'), "no 'rejected'"),
    (dict(prompt='a', chosen='', rejected='c'), "'chosen' is empty"),
    (dict(prompt=[{'role': 'user', 'content': 'a'}], chosen='b', rejected='c'), 'all three'),
    (dict(prompt=[{'role': 'user', 'content': 'a'}], chosen=[{'role': 'assistant',
     'content': 'b'}], rejected=[{'role': 'assistant', 'content': 'c'}]), 'chat template'),
    (dict(prompt='x' * 40, chosen='b', rejected='c'), 'raise data.seq_len'),
])
def test_bad_preference_files_are_refused_in_one_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / 'p.jsonl', [*PAIRS[:3], record])
    cfg = data_config('', name='files', path=path, splits='train=*', seq_len=16)
    with pytest.raises(ConfigError, match=message) as e:
        pipeline.build_pipeline(cfg, split='train', batch_size=2, seed=0)
    assert 'p.jsonl:4' in str(e.value) and '\n' not in str(e.value)


def test_config_errors(tmp_path):
    load = lambda arg: config_lib.load(os.path.join(REPO, 'experiments/dpo.py') + arg)  # noqa
    with pytest.raises(ConfigError, match='needs init=RUN'):
        load(':type=ipo')
    with pytest.raises(ConfigError, match='type='):
        load(':type=kto')
    cfg = load(':type=orpo')
    assert cfg.loss.reference == '' and cfg.loss.beta == 0.1
    cfg.lora = dict(targets=['.*query/kernel'], rank=2, alpha=4.0)
    cfg.loss.update(type='dpo', reference='adapters_off')
    with pytest.raises(ConfigError, match='optimizer.freeze'):
        preference.check(cfg)
    cfg.optimizer.freeze = ['(?!lora/).*']
    preference.check(cfg)
    cfg.model.moe.experts = 4
    with pytest.raises(ConfigError, match='Mixture-of-Experts'):
        preference.check(cfg)


# -------------------------------------------------------------------------------- the CLI

TINY, EVALS = SFT_TINY[:4], SFT_TINY[4:7]


@pytest.mark.slow  # ~35-40 s; the DPO CLI in the default suite: test_interop_train's
# test_dpo_from_an_imported_run; exact resume of a run: test_reliability, test_grpo
def test_dpo_cli_from_an_sft_run_evaluates_and_resumes_exactly(sft_run, tmp_path):
    spec = f'experiments/dpo.py:init={sft_run},steps=12,batch=16,seq=128,lr=3e-3'
    fixed = ['--config.optimizer.warmup_steps=1', '--config.optimizer.decay_steps=12']
    workdir, stopped = str(tmp_path / 'dpo'), str(tmp_path / 'stopped')
    run_cli('train', '--config', spec, '--workdir', workdir, *EVALS, *fixed)
    loss = metric_series(workdir)
    assert loss[12] < 0.9 * np.log(2), loss  # from log 2: the policy starts as the reference
    val = metric_series(workdir, 'val/rewards/accuracies')
    assert 0 <= val[12] <= 1 and metric_series(workdir, 'val/pairs')[12] == 32
    assert metric_series(workdir, 'train/pairs')[12] == 16
    run_cli('train', '--config', spec, '--workdir', stopped, *EVALS, *fixed,
            '--config.train.steps=8')  # stopped after 8 of 12, then resumed
    run_cli('train', '--config', spec, '--workdir', stopped, *EVALS, *fixed)
    for key in ('train/loss', 'train/rewards/margins', 'val/rewards/accuracies'):
        want, got = metric_series(workdir, key), metric_series(stopped, key)
        assert set(want) <= set(got), key  # (the stopped run also evaluated at its step 8)
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-6,
                                   err_msg=key)
    evaluated = run_cli('eval', '--workdir', workdir).stdout
    assert 'val/rewards/accuracies' in evaluated and 'gen/exact_match' in evaluated
    bad = run_cli('train', '--config', 'experiments/dpo.py:type=ipo', '--workdir',
                  str(tmp_path / 'bad'), check=False)
    assert bad.returncode == 2 and 'init=RUN' in bad.stderr
    path = write_jsonl(tmp_path / 'prefs.jsonl', [*PAIRS, dict(prompt='p', chosen='c')])
    bad_file = run_cli('train', '--config', f'experiments/dpo.py:init={sft_run},data={path}',
                       '--workdir', str(tmp_path / 'bad'), check=False)
    assert bad_file.returncode == 2
    assert "prefs.jsonl:41: no 'rejected'" in bad_file.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / 'bad')


@pytest.mark.slow
def test_dpo_lora_and_simpo_cli(sft_run, tmp_path):
    workdir = str(tmp_path / 'lora')
    run_cli('train', '--config',
            f'experiments/dpo.py:init={sft_run},lora=4,steps=8,batch=16,seq=128',
            '--workdir', workdir, *EVALS)
    assert metric_series(workdir)[8] < np.log(2)
    base, tuned = run_lib.load_run(sft_run), run_lib.load_run(workdir)
    jax.tree.map(np.testing.assert_array_equal, base.params,
                 {k: v for k, v in tuned.params.items() if k != lora.KEY})  # base frozen
    simpo = str(tmp_path / 'simpo')
    # 16 steps at lr 1e-2, the later half's logged losses against the earlier half's: one
    # batch's loss moves with the batch (the embedded pairs are the running Python's stdlib:
    # 3.11's gives 0.96, 0.83, 0.71, 0.65; 3.12's 0.75, 0.93, 0.68, 0.90)
    run_cli('train', '--config',
            'experiments/dpo.py:type=simpo,steps=16,batch=16,seq=128,lr=1e-2',
            '--workdir', simpo, *TINY, *EVALS)
    loss = metric_series(simpo)
    assert sorted(loss) == [4, 8, 12, 16], loss
    assert loss[12] + loss[16] < loss[4] + loss[8], loss
