"""End to end through the CLI: SimCLR on digits, CLIP / SigLIP on shapes.

* the contrastive losses on a batch sharded over 8 simulated devices equal the one-device
  values (the loss sees the global batch's negatives without any collective of ours);
* slow: a short SimCLR run beats the same linear probe on randomly initialised features by
  >= 10 points; short CLIP and SigLIP runs reach >= 3x chance zero-shot accuracy and
  image->text R@1.
"""
import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from conftest import metric_series, run_cli
from jaxbig import data, models
from jaxbig.evals.embedding import plain_data_config
from jaxbig.evals.linear_probe import probe_accuracy
from jaxbig.step import init_fn

SIMCLR = 'experiments/simclr.py'
CLIP = 'experiments/clip.py'
SMALL_SHAPES = ['--config.data.resolution=16', '--config.data.num_train=2000',
                '--config.data.num_test=500']


@pytest.fixture(scope='module')
def image_tfds_dir(tmp_path_factory):
    """TFDS data dir with digits and the small shapes prepared (TFDS_DATA_DIR for the CLI)."""
    path = str(tmp_path_factory.mktemp('tfds_images'))
    data.prepare(ml_collections.ConfigDict({'pipeline': 'views', 'name': 'digits',
                                            'data_dir': path}))
    data.prepare(ml_collections.ConfigDict({'pipeline': 'image_text', 'name': 'shapes',
                                            'data_dir': path, 'resolution': 16,
                                            'num_train': 2000, 'num_test': 500}))
    old = os.environ.get('TFDS_DATA_DIR')
    os.environ['TFDS_DATA_DIR'] = path
    yield path
    if old is None:
        os.environ.pop('TFDS_DATA_DIR', None)
    else:
        os.environ['TFDS_DATA_DIR'] = old


TINY_SIMCLR = ['--config', f'{SIMCLR}:backbone=cnn,width=8,steps=2,batch=32',
               '--config.train.log_every=1', '--config.evals.probe.max_train=64',
               '--config.evals.knn.max_train=64', '--config.evals.probe.max_test=32',
               '--config.evals.knn.max_test=32']
TINY_SIGLIP = ['--config', f'{CLIP}:loss=siglip,width=32,embed=16,steps=2,batch=32',
               *SMALL_SHAPES, '--config.train.log_every=1',
               '--config.evals.retrieval.max_examples=64', '--config.evals.zero_shot.max_examples=64']


@pytest.mark.parametrize('args', [TINY_SIMCLR, TINY_SIGLIP], ids=['simclr', 'siglip'])
def test_sharded_contrastive_loss_equals_one_device(image_tfds_dir, tmp_path, args):
    run_cli('train', '--workdir', str(tmp_path / 'one'), *args)
    run_cli('train', '--workdir', str(tmp_path / 'eight'), *args, devices=8)
    for key in ('train/loss', 'train/sim_gap'):
        a, b = metric_series(tmp_path / 'one', key), metric_series(tmp_path / 'eight', key)
        assert sorted(a) == sorted(b) == [1, 2]
        np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)


def last_row(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    out = {}
    for row in rows:
        out.update(row)
    return out


def random_init_probe(workdir) -> float:
    """The run's linear probe, on the features of the untrained network (same init seed)."""
    with open(os.path.join(workdir, 'config.json')) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    model = models.get_model(cfg.model.name, **{k: v for k, v in cfg.model.items() if k != 'name'})
    data_cfg = plain_data_config(cfg.data)

    def whole(split):
        n = len(data.build_pipeline(data_cfg, split=split, batch_size=1, seed=0).split)
        return data.build_pipeline(data_cfg, split=split, batch_size=n, seed=0).get_batch(0)

    train, test = whole(data_cfg.train_split), whole(data_cfg.val_split)
    params = init_fn(model, optax.identity(), (train['image'][:1],), cfg.train.seed)().params
    features = jax.jit(lambda x: model.apply({'params': params}, x, method='features'))
    return probe_accuracy(np.asarray(features(train['image'])), train['label'],
                          np.asarray(features(test['image'])), test['label'])


@pytest.mark.slow
def test_simclr_probe_beats_random_init(image_tfds_dir, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), '--config',
            f'{SIMCLR}:backbone=resnet18,width=8,steps=120,batch=128', timeout=900)
    learned = last_row(tmp_path)['probe/accuracy']
    random = random_init_probe(tmp_path)
    print(f'linear probe: learned {learned:.3f}, random init {random:.3f}')
    assert learned >= random + 0.10, (learned, random)


@pytest.mark.slow
@pytest.mark.parametrize('loss', ['clip', 'siglip'])
def test_clip_and_siglip_beat_chance(image_tfds_dir, tmp_path, loss):
    run_cli('train', '--workdir', str(tmp_path), '--config',
            f'{CLIP}:loss={loss},width=32,embed=32,steps=300,batch=64', *SMALL_SHAPES,
            '--config.model.image.patch_size=4', timeout=900)
    row = last_row(tmp_path)
    print({k: v for k, v in row.items() if k.startswith(('zero_shot', 'retrieval'))})
    assert row['zero_shot/accuracy'] >= 3 * row['zero_shot/chance']
    assert row['retrieval/i2t_r1'] >= 3 * row['retrieval/i2t_chance_r1']
