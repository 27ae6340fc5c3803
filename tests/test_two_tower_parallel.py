"""Contrastive losses see the global batch under every parallel layout, pmap included.

* default suite: (a) NT-Xent, CLIP and SigLIP with a linear embedding under `jax.pmap` over
  8 devices (embeddings gathered by `pmap.global_rows`, gradients `pmean`-ed as step.py
  does) give the one-device loss and gradient of the whole batch; (b) the two-tower CLIP
  model trained 5 steps through `train.train` with `parallel.strategy='pmap'` on 8 devices
  logs the one-device losses (~20 s CPU per process, the two processes side by side);
* slow: CLIP and SigLIP on meshes (8,1,1), (1,8,1), (2,2,2) and pmap, SimCLR on pmap and
  (8,1,1), each 5 steps against one device.

Every training run goes through the real loop (`train.train`) in one subprocess per device
count (the device count is fixed when jax is first imported); evaluators are switched off.
"""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from conftest import REPO, xla_flags
from jaxbig import data
from jaxbig.aggregate import values

STEPS = 5
CLIP = 'experiments/clip.py'
VIT_TOWERS = 'image=vit,image_width=0,text_pool=eos,text_depth=2'  # not clip.py's CNN + bag
SIMCLR = 'experiments/simclr.py'
# Tiny models, 2 rows per device at 8 devices; the losses see the 16-row global batch.
SHAPES = ['--config.data.resolution=16', '--config.data.num_train=256',
          '--config.data.num_test=64']
TOWERS = ['--config.model.image.depth=1', '--config.model.text.depth=1', *SHAPES]
RUNS = {
    'clip': (f'{CLIP}:loss=clip,{VIT_TOWERS},width=16,embed=16,steps={STEPS},batch=16', TOWERS),
    'siglip': (f'{CLIP}:loss=siglip,{VIT_TOWERS},width=16,embed=16,steps={STEPS},batch=16', TOWERS),
    'simclr': (f'{SIMCLR}:backbone=cnn,width=8,steps={STEPS},batch=16',
               ['--config.model.backbone.cnn_layers=2', '--config.model.proj_hidden_dims=(16,)',
                '--config.model.proj_dim=16']),
}
LAYOUTS = {  # name -> parallel overrides
    'one': [],
    'pmap': ['--config.parallel.strategy=pmap'],
    '8,1,1': ['--config.parallel.data=8'],
    '1,8,1': ['--config.parallel.data=1', '--config.parallel.fsdp=8'],
    '2,2,2': ['--config.parallel.data=2', '--config.parallel.fsdp=2',
              '--config.parallel.tensor=2'],
}


@pytest.fixture(scope='module')
def images_dir(tmp_path_factory):
    """TFDS data dir with the small shapes and digits prepared (TFDS_DATA_DIR for workers)."""
    path = str(tmp_path_factory.mktemp('tfds_two_tower'))
    data.prepare(ml_collections.ConfigDict({'pipeline': 'image_text', 'name': 'shapes',
                                            'data_dir': path, 'resolution': 16,
                                            'num_train': 256, 'num_test': 64}))
    data.prepare(ml_collections.ConfigDict({'pipeline': 'views', 'name': 'digits',
                                            'data_dir': path}))
    return path


def train_worker(run: str, layouts: list[str], workdir: str):
    """In a subprocess: `train.train` of RUNS[run] for each layout; prints
    {layout: [loss at steps 1..STEPS]} as the last line of stdout."""
    import jax

    from jaxbig import cli, train
    from conftest import metric_series

    spec, overrides = RUNS[run]
    out = {}
    for name in layouts:
        config = cli.load_config(spec, [*overrides, '--config.train.log_every=1',
                                        '--config.train.checkpoint_every=0', *LAYOUTS[name]])
        config.evals = {}
        train.train(config, os.path.join(workdir, name))
        losses = metric_series(os.path.join(workdir, name))
        out[name] = [losses[s] for s in range(1, STEPS + 1)]
    print(json.dumps({'devices': jax.device_count(), 'losses': out}))


def run_workers(run, layouts, tmp_path, tfds_dir):
    """One 1-device and one 8-device worker, side by side -> {layout: losses}."""
    procs = []
    for devices, names in ((1, ['one']), (8, layouts)):
        env = dict(os.environ, XLA_FLAGS=xla_flags(devices),
                   JAX_PLATFORMS='cpu', TFDS_DATA_DIR=tfds_dir)
        code = ('import sys; sys.path.insert(0, "tests"); import test_two_tower_parallel as t; '
                f't.train_worker({run!r}, {names!r}, {str(tmp_path / str(devices))!r})')
        procs.append((devices, subprocess.Popen(
            [sys.executable, '-c', code], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    losses = {}
    for devices, proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-4000:]
        out = json.loads(stdout.strip().splitlines()[-1])
        assert out['devices'] == devices
        losses.update(out['losses'])
    return losses


def assert_match_one_device(losses, layouts):
    one = losses['one']
    assert len(one) == STEPS and len(set(one)) > 1  # it trains: the loss moves
    # float32 rounding of a loss summed over N^2 pairs in another order: ~1e-6 of SigLIP's
    # ~12 nats (the suite's unoptimised compiles round a little more than a run's)
    for name in layouts:
        np.testing.assert_allclose(losses[name], one, rtol=2e-6, atol=1e-5, err_msg=name)


@pytest.mark.slow  # ~35-45 s; the sharded contrastive losses are checked by default
# (test_contrastive_train) and every objective's pmap by test_invariance
def test_clip_pmap_matches_one_device(images_dir, tmp_path, gather_run):
    # gather_run: starts the (independent) gradient check's subprocess now, so that it runs
    # beside these workers on the spare CPU; test_gathered_losses_... reads its result.
    losses = run_workers('clip', ['pmap'], tmp_path, images_dir)
    assert_match_one_device(losses, ['pmap'])


@pytest.mark.slow
@pytest.mark.parametrize('run, layouts', [
    ('clip', ['8,1,1', '1,8,1', '2,2,2', 'pmap']),
    ('siglip', ['8,1,1', '1,8,1', '2,2,2', 'pmap']),
    ('simclr', ['8,1,1', 'pmap']),
])
def test_full_matrix_matches_one_device(images_dir, tmp_path, run, layouts):
    losses = run_workers(run, layouts, tmp_path, images_dir)
    assert_match_one_device(losses, layouts)


# ----------------------------------------------------------------- the gather, gradients
# A linear embedding stands in for the towers; loss and gradient of each device's loss
# under pmap (pmean-ed, as step.py does) against the one-device loss of the whole batch.
GATHER_SCRIPT = r'''
import json
import jax, jax.numpy as jnp, ml_collections, numpy as np
from jaxbig import pmap as pmap_lib
from jaxbig.aggregate import values
from jaxbig.losses import contrastive, multimodal

def embed(params, x):
    return x @ params['w']

def clip_apply(variables, image, text, train, rngs):
    p = variables['params']
    return dict(image=contrastive.l2_normalize(embed(p, image)),
                text=contrastive.l2_normalize(text @ p['v']), logit_scale=p['t'],
                logit_bias=p.get('b'))

def simclr_apply(variables, views, train, rngs):
    return embed(variables['params'], views)

rng = np.random.default_rng(0)
n, d, e = 16, 6, 5
params = dict(w=rng.normal(size=(d, e)), v=rng.normal(size=(d, e)), t=np.float32(1.2),
              b=np.float32(-2.0))
all_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
batches = {
    'simclr': dict(view1=rng.normal(size=(n, d)), view2=rng.normal(size=(n, d))),
    'clip': dict(image=rng.normal(size=(n, d)), text=rng.normal(size=(n, d))),
    'siglip': dict(image=rng.normal(size=(n, d)), text=rng.normal(size=(n, d))),
}
losses = {  # loss, model, loss config, the parameters the model uses
    'simclr': (contrastive.loss_fn, simclr_apply, dict(temperature=0.2), ('w',)),
    'clip': (multimodal.loss_fn, clip_apply, dict(kind='clip', max_logit_scale=4.6),
             ('w', 'v', 't')),
    'siglip': (multimodal.loss_fn, clip_apply, dict(kind='siglip'), ('w', 'v', 't', 'b')),
}
ndev = jax.device_count()
out = {}
for name, (loss_fn, apply, cfg, used) in losses.items():
    cfg = ml_collections.ConfigDict(cfg)
    params = {k: all_params[k] for k in used}
    batch = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), batches[name])
    f = lambda p, b: values(loss_fn(apply, p, b, {}, cfg, train=True))
    (ref_loss, ref_metrics), ref_grads = jax.jit(jax.value_and_grad(f, has_aux=True))(
        params, batch)

    def per_device(p, b):
        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(p, b)
        return jax.lax.pmean((loss, metrics, grads), pmap_lib.AXIS)

    pmapped = jax.pmap(per_device, axis_name=pmap_lib.AXIS)
    reps = jax.tree.map(lambda a: jnp.broadcast_to(a, (ndev, *a.shape)), params)
    shards = jax.tree.map(lambda a: a.reshape(ndev, n // ndev, *a.shape[1:]), batch)
    loss, metrics, grads = jax.tree.map(lambda a: a[0], pmapped(reps, shards))
    out[name] = dict(
        loss=[float(ref_loss), float(loss)],
        grads={k: [np.asarray(ref_grads[k]).tolist(), np.asarray(grads[k]).tolist()]
               for k in grads},
        metrics={k: [float(ref_metrics[k]), float(metrics[k])] for k in ref_metrics})
print(json.dumps(dict(devices=ndev, in_pmap_outside=pmap_lib.in_pmap(), out=out)))
'''


@pytest.fixture(scope='module')
def gather_run():
    """GATHER_SCRIPT running in an 8-device subprocess (started on first request)."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(8),
               JAX_PLATFORMS='cpu')
    proc = subprocess.Popen([sys.executable, '-c', GATHER_SCRIPT], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_gathered_losses_and_gradients_equal_one_device(gather_run):
    stdout, stderr = gather_run.communicate(timeout=300)
    assert gather_run.returncode == 0, stderr[-4000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result['devices'] == 8 and not result['in_pmap_outside']
    assert set(result['out']) == {'simclr', 'clip', 'siglip'}
    for name, r in result['out'].items():
        np.testing.assert_allclose(*r['loss'][::-1], rtol=1e-6, err_msg=name)
        for key, (ref, got) in r['grads'].items():
            assert np.abs(ref).max() > 1e-3, (name, key)  # a gradient that matters
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6,
                                       err_msg=f'{name}: grad {key}')
        for key, (ref, got) in r['metrics'].items():
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6,
                                       err_msg=f'{name}: metric {key}')
