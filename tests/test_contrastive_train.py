"""SimCLR on digits, CLIP / SigLIP on shapes: sharding, and end to end through the CLI.

* the contrastive losses on a batch sharded over 8 simulated devices equal the one-device
  values (the loss sees the global batch's negatives without any collective of ours):
  default suite: NT-Xent, CLIP and SigLIP with tiny real models and batches, forward only,
  in one 8-device subprocess (~15 s CPU); slow: two whole training steps through the CLI on
  1 and on 8 devices, evaluators on (they run on the 8-device mesh too);
* slow: a short SimCLR run beats the same linear probe on randomly initialised features by
  >= 10 points; short CLIP and SigLIP runs reach >= 3x chance zero-shot accuracy and
  image->text R@1.
"""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest

from conftest import REPO, metric_series, run_cli, xla_flags
from jaxbig import data, models
from jaxbig.aggregate import values
from jaxbig.evals.embedding import plain_data_config
from jaxbig.evals.linear_probe import probe_accuracy
from jaxbig.step import init_fn

SIMCLR = 'experiments/simclr.py'
CLIP = 'experiments/clip.py'
VIT_TOWERS = 'image=vit,image_width=0,text_pool=eos,text_depth=2'  # not clip.py's CNN + bag
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


# Smallest models that still exercise every part of the loss (2 rows per device at 8
# devices); the losses see the 16-row global batch.
TINY = ['--config.train.log_every=1', '--config.train.eval_every=0']
TINY_SIMCLR = (SIMCLR, 'backbone=cnn,width=8,steps=2,batch=16',
               ['--config.model.backbone.cnn_layers=2', '--config.model.proj_hidden_dims=(16,)',
                '--config.model.proj_dim=16'])
TINY_TOWERS = ['--config.model.image.depth=1', '--config.model.text.depth=1', *SMALL_SHAPES]
TINY_SIGLIP = (CLIP, f'loss=siglip,{VIT_TOWERS},width=16,embed=16,steps=2,batch=16', TINY_TOWERS)
TINY_CLIP = (CLIP, f'loss=clip,{VIT_TOWERS},width=16,embed=16,steps=2,batch=16', TINY_TOWERS)
TINY_RUNS = {'simclr': TINY_SIMCLR, 'clip': TINY_CLIP, 'siglip': TINY_SIGLIP}
EVAL_LIMITS = {  # small evaluation sets for the end-to-end runs
    SIMCLR: ['--config.evals.probe.max_train=64', '--config.evals.knn.max_train=64',
             '--config.evals.probe.max_test=32', '--config.evals.knn.max_test=32'],
    CLIP: ['--config.evals.retrieval.max_examples=64',
           '--config.evals.zero_shot.max_examples=64'],
}


def sharded_loss_worker(names):
    """Runs in a subprocess with 8 CPU devices: `check_sharded_loss` for each tiny run."""
    assert jax.device_count() == 8, jax.devices()
    for name in names:
        check_sharded_loss(name)


def check_sharded_loss(name):
    """The tiny run's model, bound loss function and a real training batch: loss and
    metrics jitted on a 1-device mesh and on the 8-device mesh (batch sharded over `data`)
    agree. Parameters are random numbers of the init's shapes (no init to compile); forward
    only (compiling the backward pass would triple the cost - the slow CLI test compares two
    whole training steps, so gradients and updates too)."""
    import flax.linen as nn
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxbig import config as config_lib
    from jaxbig import losses, parallel

    experiment, arg, overrides = TINY_RUNS[name]
    cfg = config_lib.load(f'{experiment}:{arg}')
    config_lib.apply_overrides(cfg, [o[len('--config.'):].split('=', 1)
                                     for o in TINY + overrides])
    model = models.get_model(cfg.model.name, **{k: v for k, v in cfg.model.items() if k != 'name'})
    loss_module = losses.get_loss_module(cfg.loss.name)
    loss_fn = losses.bind(loss_module, cfg.loss)
    batch = data.build_pipeline(cfg.data, split=cfg.data.train_split,
                                batch_size=cfg.train.batch_size, seed=0).get_batch(0)
    key = jax.random.PRNGKey(0)
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(
        {'params': key, 'dropout': key}, *loss_module.model_inputs(batch), train=False)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (rng.normal(size=s.shape) / np.sqrt(
        max(np.prod(s.shape[:-1]), 1))).astype(s.dtype), shapes['params'])

    def loss_and_metrics(params, batch):
        return values(loss_fn(model.apply, params, batch, {'dropout': key}, cfg.loss,
                              train=True))

    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(cfg.parallel, devices=devices)
        with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_from_config(cfg.parallel)):
            global_batch = parallel.to_global(batch, parallel.batch_sharding(mesh))
            assert all(len(x.sharding.device_set) == len(devices) for x in global_batch.values())
            replicated = jax.device_put(params, NamedSharding(mesh, P()))
            results.append(jax.device_get(jax.jit(loss_and_metrics)(replicated, global_batch)))
    (loss1, metrics1), (loss8, metrics8) = results
    np.testing.assert_allclose(loss8, loss1, rtol=0, atol=1e-5, err_msg=f'{name}: loss')
    assert set(metrics8) == set(metrics1) >= {'loss', 'sim_gap', 'temperature'}, name
    for k in metrics1:
        np.testing.assert_allclose(metrics8[k], metrics1[k], rtol=0, atol=1e-5,
                                   err_msg=f'{name}: metric {k}')
    print(f'{name}: loss {float(loss1):.6f} (1 device) {float(loss8):.6f} (8 devices)')


def test_sharded_losses_equal_one_device(image_tfds_dir):
    """NT-Xent, CLIP and SigLIP (with their real models and batches) on a batch sharded over
    8 simulated devices equal the one-device values (loss and logged metrics)."""
    code = ('import sys; sys.path.insert(0, "tests"); import test_contrastive_train as t; '
            't.sharded_loss_worker(["simclr", "clip", "siglip"])')
    env = dict(os.environ, XLA_FLAGS=xla_flags(8),
               JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stdout)


def assert_same_train_metrics(one, eight):
    for key in ('train/loss', 'train/sim_gap'):
        a, b = metric_series(one, key), metric_series(eight, key)
        assert sorted(a) == sorted(b) == [1, 2], (key, a, b)
        # float32 rounding in another reduction order: ~1e-6 of SigLIP's ~12 nats
        np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=2e-6, atol=1e-5,
                                   err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['simclr', 'clip', 'siglip'])
def test_sharded_training_equals_one_device(image_tfds_dir, tmp_path, name):
    """End to end through the CLI: two training steps on 1 and on 8 devices log the same
    loss and similarity gap, and the evaluators run on the 8-device mesh too."""
    experiment, arg, overrides = TINY_RUNS[name]
    args = ['--config', f'{experiment}:{arg}', *TINY, *overrides, *EVAL_LIMITS[experiment]]
    run_cli('train', '--workdir', str(tmp_path / 'one'), *args)
    run_cli('train', '--workdir', str(tmp_path / 'eight'), *args, devices=8)
    assert_same_train_metrics(tmp_path / 'one', tmp_path / 'eight')
    evals = lambda row: {k for k in row if k.split('/')[0] in ('probe', 'knn', 'zero_shot',
                                                              'retrieval')}
    one, eight = last_row(tmp_path / 'one'), last_row(tmp_path / 'eight')
    assert evals(one) and evals(one) == evals(eight), (sorted(one), sorted(eight))


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
            f'{CLIP}:loss={loss},{VIT_TOWERS},width=32,embed=32,steps=300,batch=64',
            *SMALL_SHAPES,
            '--config.model.image.patch_size=4', timeout=900)
    row = last_row(tmp_path)
    print({k: v for k, v in row.items() if k.startswith(('zero_shot', 'retrieval'))})
    assert row['zero_shot/accuracy'] >= 3 * row['zero_shot/chance']
    assert row['retrieval/i2t_r1'] >= 3 * row['retrieval/i2t_chance_r1']
