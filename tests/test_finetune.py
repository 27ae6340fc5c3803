"""Fine-tuning pieces: classification metrics, loading with rename/include/exclude and its
errors, frozen parameters bit-identical, lr multipliers, and a linear-probe run via the CLI."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import metric_series, run_cli
from jaxbig import checkpoint, finetune, optim
from jaxbig.config import ConfigError
from jaxbig.evals import classification
from jaxbig.losses import classification as cls_loss


@pytest.mark.parametrize('seed', range(8))
def test_scores_match_sklearn_macro_with_absent_classes(seed):
    """Macro averages over classes in the labels OR the predictions, as sklearn's
    average='macro' (class 5 is predicted but never a label; 3, 4 never predicted)."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(seed)
    k = 6
    labels = rng.integers(0, 5, size=50)
    preds = rng.choice([0, 1, 2, 5], size=50)
    s = classification.scores(classification.confusion_matrix(labels, preds, k))
    np.testing.assert_allclose(
        [s['accuracy'], s['macro_recall'], s['macro_f1']],
        [accuracy_score(labels, preds),
         recall_score(labels, preds, average='macro', zero_division=0),
         f1_score(labels, preds, average='macro', zero_division=0)])


def test_scores_macro_counts_a_predicted_but_absent_class():
    """labels [0,0,1,1], predictions [0,2,1,1]: sklearn's macro F1 is 0.556 (class 2 counts)."""
    s = classification.scores(classification.confusion_matrix([0, 0, 1, 1], [0, 2, 1, 1], 3))
    np.testing.assert_allclose(s['macro_f1'], (2 / 3 + 1 + 0) / 3)  # = 0.556, not 0.833
    np.testing.assert_allclose(s['macro_recall'], (0.5 + 1 + 0) / 3)


def test_label_smoothing_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits, labels, s = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5), 0.1
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.full((5, 4), s / 4)
    target[np.arange(5), labels] += 1 - s
    expected = -(target * logp).sum(-1).mean()
    got = cls_loss.smoothed_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), s).mean()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


SOURCE = {'embed': {'embedding': np.ones((4, 3))}, 'head': {'kernel': np.ones((3, 2))}}
TARGET = {'encoder': {'embed': {'embedding': np.zeros((4, 3))}},
          'head': {'kernel': np.zeros((3, 5))}}


def test_merge_rename_include_exclude():
    merged, loaded = finetune.merge_pretrained(TARGET, SOURCE, rename=[('^', 'encoder/')],
                                               include=['encoder/.*'])
    assert loaded == ['encoder/embed/embedding']
    assert merged['encoder']['embed']['embedding'].sum() == 12
    assert merged['head']['kernel'].sum() == 0  # fresh head kept


def test_merge_shape_mismatch_names_path_and_shapes():
    with pytest.raises(ConfigError, match=r'encoder/head/kernel has shape \(3, 2\) in the '
                                          r'checkpoint but \(3, 5\)'):
        finetune.merge_pretrained({'encoder': {'head': {'kernel': np.zeros((3, 5))}}}, SOURCE,
                                  rename=[('^', 'encoder/')])


def test_merge_nothing_loaded_is_an_error():
    with pytest.raises(ConfigError, match='no parameter was loaded'):
        finetune.merge_pretrained(TARGET, SOURCE, exclude=['head/.*'])  # no rename: no match


def opt_cfg(**kw):
    from jaxbig import defaults

    base = dict(name='adamw', lr=0.1, schedule='constant', warmup_steps=0, weight_decay=0.1,
                clip_norm=1.0, freeze=[], lr_mults=[])
    base.update(kw)
    return ml_collections.ConfigDict(defaults.optimizer(**base))


def test_frozen_params_bit_identical_and_lr_mults():
    params = {'encoder': {'w': jnp.ones((3, 3)), 'v': jnp.ones((3, 3))},
              'head': {'w': jnp.ones((3, 2))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx, _ = optim.build_optimizer(opt_cfg(freeze=['encoder/w']), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.array_equal(new['encoder']['w'], params['encoder']['w'])
    assert not np.array_equal(new['head']['w'], params['head']['w'])
    tx1, _ = optim.build_optimizer(opt_cfg(lr_mults=[['encoder/.*', 0.1]]), 10)
    tx0, _ = optim.build_optimizer(opt_cfg(), 10)
    u1, _ = tx1.update(grads, tx1.init(params), params)
    u0, _ = tx0.update(grads, tx0.init(params), params)
    np.testing.assert_allclose(u1['encoder']['v'], 0.1 * u0['encoder']['v'], rtol=1e-6)
    np.testing.assert_allclose(u1['head']['w'], u0['head']['w'], rtol=1e-6)
    with pytest.raises(ConfigError, match="pattern 'encoderr/.*' matches no parameter"):
        tx, _ = optim.build_optimizer(opt_cfg(freeze=['encoderr/.*']), 10)
        tx.init(params)


def test_linear_probe_from_lm_checkpoint_keeps_backbone(tfds_dir, tmp_path):
    lm = tmp_path / 'lm'
    tiny = ['--config.model.num_layers=2', '--config.model.embed_dim=64',
            '--config.model.num_heads=4', '--config.model.mlp_dim=128']
    run_cli('train', '--config', 'experiments/lm.py:steps=2,seq=32,batch=8', '--workdir',
            str(lm), *tiny, '--config.train.eval_every=0')
    probe = tmp_path / 'probe'
    run_cli('train', '--config', f'experiments/finetune_text.py:init={lm},mode=linear_probe,'
            'steps=6,seq=32,batch=8,lr=0.1', '--workdir', str(probe),
            '--config.train.log_every=2', '--config.train.eval_every=3',
            '--config.evals.val.num_examples=128')
    before, _ = checkpoint.restore_params(str(lm))
    after, step = checkpoint.restore_params(str(probe))
    assert step == 6
    for path, value in finetune.flatten(before).items():
        assert np.array_equal(np.asarray(value), np.asarray(finetune.flatten(after)['encoder/' + path])), path
    assert np.abs(np.asarray(after['head']['kernel'])).sum() > 0
    assert (probe / 'confusion_val.png').stat().st_size > 0
    acc = metric_series(probe, 'val/accuracy')
    assert sorted(acc) == [3, 6] and all(0 <= a <= 1 for a in acc.values())
    assert (probe / 'best').is_dir()
    out = run_cli('eval', '--workdir', str(probe)).stdout
    best_step = max(acc, key=lambda s: (acc[s], -s))
    assert f'checkpoint best step {best_step}' in out and 'val/macro_f1' in out
    assert (probe / 'eval_results.jsonl').exists()
    proc = run_cli('train', '--config', f'experiments/finetune_text.py:init={lm}',
                   '--workdir', str(tmp_path / 'bad'), '--config.model.backbone.embed_dim=32',
                   check=False)
    assert proc.returncode == 2 and 'has shape' in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # ~50 s: three ResNet CLI runs; the text task covers the modes by default
def test_image_probe_and_features_modes_from_simclr(tfds_dir, tmp_path):
    pre = tmp_path / 'simclr'
    run_cli('train', '--config', 'experiments/simclr.py:data=digits,steps=2,batch=32,width=8',
            '--workdir', str(pre), '--config.train.eval_every=0')
    results = {}
    for mode in ('features', 'linear_probe'):
        workdir = tmp_path / mode
        run_cli('train', '--config', f'experiments/finetune_image.py:init={pre},mode={mode},'
                'steps=30,batch=64,lr=0.05', '--workdir', str(workdir),
                '--config.train.eval_every=0')
        results[mode] = metric_series(workdir, 'val/accuracy')[30]
    # Both train the same head on the same frozen features: both far above chance (10 %).
    assert results['features'] > 0.3 and results['linear_probe'] > 0.3, results


@pytest.mark.slow
def test_lm_pretraining_beats_scratch_on_text_task(tfds_dir, tmp_path):
    """At equal steps, fine-tuning the LM-pretrained GPT beats the same GPT from scratch."""
    lm = tmp_path / 'lm'
    run_cli('train', '--config', 'experiments/lm.py:steps=400', '--workdir', str(lm),
            '--config.train.eval_every=0', timeout=1800)
    acc = {}
    for name, init in (('pretrained', f'init={lm},'), ('scratch', '')):
        workdir = tmp_path / name
        run_cli('train', '--config', f'experiments/finetune_text.py:{init}mode=full,steps=200',
                '--workdir', str(workdir), '--config.train.eval_every=0', timeout=1800)
        acc[name] = metric_series(workdir, 'val/accuracy')[200]
    assert acc['pretrained'] > acc['scratch'], acc


def fake_lm_workdir(path, seed=0):
    """A workdir with a tiny GPT's config.json and a checkpoint of random params."""
    import json

    import flax.linen as nn

    from jaxbig import models
    cfg = dict(name='gpt', vocab_size=256, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32)
    model = models.get_model(**cfg)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                     jnp.zeros((1, 4), jnp.int32))['params'])
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: np.asarray(rng.normal(size=s.shape), np.float32), shapes)
    saver = checkpoint.Checkpointer(str(path), keep=1, async_save=False)
    saver.save(1, {'params': params, 'step': np.int32(1)}, force=True)
    saver.close()
    (path / 'config.json').write_text(json.dumps({'model': cfg}))
    return model, params


def test_text_features_mode_embeds_pooled_gpt_features(tfds_dir, tmp_path):
    """finetune_text.py mode=features: each row is the LM's features pooled under the mask,
    at the last real byte or their mean (NumPy, on rows that include short snippets)."""
    from jaxbig import data
    from jaxbig.config import load
    model, params = fake_lm_workdir(tmp_path / 'lm')
    source, expected = None, {}
    for pooling in ('last', 'mean'):
        config = load(f'experiments/finetune_text.py:init={tmp_path / "lm"},mode=features,'
                      f'examples=64,pooling={pooling}')
        assert config.model.name == 'linear' and not config.init_from.path
        config.data.embed_batch = 32
        pipe = data.build_pipeline(config.data, split='train', batch_size=64, seed=0)
        if source is None:
            source = data.build_pipeline(config.data.source, split='train', batch_size=32, seed=0)
            rows = [source.get_batch(i) for i in range(2)]
            inputs, mask = (np.concatenate([r[k] for r in rows]) for k in ('inputs', 'mask'))
            np.testing.assert_array_equal(pipe.labels, np.concatenate([r['label'] for r in rows]))
            last = mask.sum(1).astype(int) - 1
            assert (last < inputs.shape[1] - 1).any()  # some short snippets: the mask matters
            hidden = np.asarray(jax.jit(
                lambda p, x: model.apply({'params': p}, x, method='features'))(params, inputs))
            expected['last'] = hidden[np.arange(64), last]
            expected['mean'] = (hidden * mask[..., None]).sum(1) / mask.sum(1)[:, None]
        assert pipe.features.shape == (64, 16) and pipe.features.dtype == np.float32
        np.testing.assert_allclose(pipe.features, expected[pooling], atol=1e-5)
    config.data.embed_examples.train = 0  # snippets have no end: the count must be set
    with pytest.raises(ConfigError, match='data.embed_examples'):
        data.build_pipeline(config.data, split='train', batch_size=16, seed=0)
