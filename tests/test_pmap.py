"""The pmap path (jaxbig/pmap.py) on 8 simulated devices gives the jit path's losses on 1.

Runs in a subprocess: the device count is fixed when jax is first imported.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_LM, metric_series, run_cli, xla_flags

STEPS = 5

# Trains STEPS steps of the tiny GPT twice, (a) jit on 1 device, (b) pmap on all devices
# (under the mesh + rules context, as train.py runs it), and prints the losses as JSON.
SCRIPT = r'''
import json, sys
import flax.linen as nn, jax, numpy as np
from jaxbig import cli, data, losses, models, optim, parallel, step as step_lib
from jaxbig import pmap as pmap_lib

steps, overrides = int(sys.argv[1]), sys.argv[2:]
config = cli.load_config(f'experiments/lm.py:steps={steps}', overrides)
t = config.train
pipe = data.build_pipeline(config.data, split='train', batch_size=t.batch_size, seed=t.seed)
val = data.build_pipeline(config.data, split='validation', batch_size=t.batch_size, seed=0)
kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
model = models.get_model(config.model.name, **kwargs)
loss_module = losses.get_loss_module(config.loss.name)
tx, schedule = optim.build_optimizer(config.optimizer, t.steps)
example = loss_module.model_inputs(jax.tree.map(lambda x: x[:1], pipe.get_batch(0)))
init = step_lib.init_fn(model, tx, example, t.seed)
rules = parallel.rules_from_config(config.parallel)
evaluate = step_lib.make_eval_step(model, loss_module.loss_fn, config.loss)

def train_step(pmap_axis):
    return step_lib.make_train_step(model, loss_module.loss_fn, config.loss, tx, schedule,
                                    pmap_axis=pmap_axis)

def run(mesh, state, step, to_device, eval_step, unrep):
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for i in range(steps):
            state, metrics = step(state, to_device(pipe.get_batch(i)))
            losses.append(float(jax.device_get(metrics['loss'])))
        val_loss = float(jax.device_get(eval_step(state.params, to_device(val.get_batch(0)))['loss']))
    return losses, val_loss, int(jax.device_get(unrep(state.step)))

one = parallel.make_mesh(config.parallel, devices=jax.devices()[:1])
with jax.set_mesh(one):
    state = jax.jit(init)()
jit_out = run(one, state, jax.jit(train_step(None), donate_argnums=0), lambda b: b,
              jax.jit(evaluate), lambda x: x)

mesh = parallel.make_mesh(config.parallel)
pmap_lib.check_mesh(mesh)
shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                         jax.eval_shape(init))
state = pmap_lib.replicate(jax.jit(init, out_shardings=shardings)())
pmap_out = run(mesh, state, pmap_lib.pmap_train_step(train_step(pmap_lib.AXIS)),
               pmap_lib.shard_batch, pmap_lib.pmap_eval_step(evaluate), pmap_lib.unreplicate)
state = pmap_out_state = None
# round trip: replicated -> mesh layout (checkpoint format) -> replicated
init_state = jax.jit(init, out_shardings=shardings)()
back = pmap_lib.to_mesh(pmap_lib.replicate(init_state), shardings)
same = all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
           for a, b in zip(jax.tree.leaves(init_state), jax.tree.leaves(back)))
print(json.dumps({'devices': jax.device_count(), 'jit': jit_out, 'pmap': pmap_out,
                  'round_trip': same}))
'''


@pytest.mark.slow  # ~15 s; the invariance matrix holds every objective under pmap2 (default)
def test_pmap_matches_jit_on_one_device(tfds_dir):
    env = dict(os.environ, XLA_FLAGS=xla_flags(8))
    env.setdefault('JAX_PLATFORMS', 'cpu')
    proc = subprocess.run(
        [sys.executable, '-W', 'error::DeprecationWarning:jax.*', '-c', SCRIPT, str(STEPS),
         *TINY_LM],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['devices'] == 8
    (jit_losses, jit_val, jit_step), (pmap_losses, pmap_val, pmap_step) = out['jit'], out['pmap']
    assert len(jit_losses) == len(pmap_losses) == STEPS
    np.testing.assert_allclose(pmap_losses, jit_losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose(pmap_val, jit_val, rtol=0, atol=1e-5)
    assert jit_step == pmap_step == STEPS
    assert out['round_trip']


@pytest.mark.slow
def test_cli_pmap_matches_one_device_and_resumes(tfds_dir, tmp_path):
    """Through `jaxbig train`: pmap on 8 devices, stopped after 2 steps and relaunched,
    gives the 1-device losses (train and val); its checkpoints resume under 'mesh'."""
    common = ['--config', 'experiments/lm.py:steps=4', *TINY_LM, '--config.train.eval_every=2']
    pmap = [*common, '--config.parallel.strategy=pmap']
    run_cli('train', '--workdir', str(tmp_path / 'ref'), *common)
    run_cli('train', '--workdir', str(tmp_path / 'pmap'), *pmap, '--config.train.steps=2',
            devices=8)
    run_cli('train', '--workdir', str(tmp_path / 'pmap'), *pmap, devices=8)
    for key in ('train/loss', 'val/loss'):
        ref, got = metric_series(tmp_path / 'ref', key), metric_series(tmp_path / 'pmap', key)
        assert sorted(got) == sorted(ref) and ref
        np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=0, atol=1e-5)
    # the pmap checkpoint (step 4) is in the mesh layout: an fsdp run resumes from it
    run_cli('train', '--workdir', str(tmp_path / 'pmap'), *common, '--config.train.steps=5',
            '--config.parallel.fsdp=2', devices=2)
    assert sorted(metric_series(tmp_path / 'pmap')) == [1, 2, 3, 4, 5]


def test_pmap_needs_a_data_parallel_mesh(tfds_dir, tmp_path):
    proc = run_cli('train', '--workdir', str(tmp_path), '--config', 'experiments/lm.py:steps=1',
                   *TINY_LM, '--config.parallel.strategy=pmap', '--config.parallel.fsdp=2',
                   devices=2, check=False)
    assert proc.returncode == 2
    assert 'fsdp=1, expert=1 and tensor=1' in proc.stderr.strip().splitlines()[-1]


# pmap outputs -> one replica: read from the first local device's buffer, not by a program
# over the local devices (`x[0]` compiles a gather with an all-reduce over them).
UNREPLICATE = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jaxbig import pmap as pmap_lib
n = jax.local_device_count()
out = jax.pmap(lambda x: {'sum': jax.lax.psum(x, 'i'), 'own': x * 2}, axis_name='i')(
    jnp.arange(n * 3, dtype=jnp.float32).reshape(n, 3))
got = pmap_lib.unreplicate(out)
print(json.dumps({k: {'value': np.asarray(v).tolist(),
                      'devices': sorted(d.id for d in v.sharding.device_set)}
                  for k, v in got.items()} | {'first': jax.local_devices()[0].id}))
'''


def test_unreplicate_reads_the_first_device_without_a_collective():
    env = dict(os.environ, XLA_FLAGS=xla_flags(4))
    env.setdefault('JAX_PLATFORMS', 'cpu')
    proc = subprocess.run([sys.executable, '-c', UNREPLICATE], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(out['sum']['value'], x.sum(0))
    np.testing.assert_array_equal(out['own']['value'], x[0] * 2)
    assert out['sum']['devices'] == out['own']['devices'] == [out['first']]
