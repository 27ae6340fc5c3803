"""Resharding on resume: a checkpoint written under one mesh / device count / process count /
strategy restores under another, bit-identical, and training continues with the losses of
an uninterrupted run.

Every run is the real CLI on the tiny LM with TOTAL steps of schedule (decay_steps and
warmup_steps pinned, so a launch stopped at `--config.train.steps=STOP` follows the same
learning-rate schedule as one that runs to TOTAL); the stopped workdir is copied and
resumed to TOTAL under another layout. The reference is one uninterrupted fsdp=4 run.

Tolerance on losses: atol 1e-5 (as tests/test_sharding.py and test_multihost.py). The
losses are ~5 nats, where one float32 ulp is 4.8e-7; another mesh or strategy sums the
same products in another order (sharded matmuls, all-reduces of gradients, pmap's pmean),
so each update may differ by a few ulps and 8 Adam updates carry that to ~1e-6 (measured:
at most 9.5e-7, 2 ulps). Consecutive losses differ by 0.06-0.3 here (each update moves
the params by ~lr = 3e-3 per weight), so a restore of the wrong step, lost optimizer
moments or a misplaced shard land far outside it. Restored
arrays are compared bit for bit: restoring moves bytes, it computes nothing.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import (REPO, TINY_LM, metric_series, process_logs, run_cli,
                      start_processes, xla_flags)

from jaxbig import checkpoint

STOP, TOTAL = 3, 8  # the stopped launch saves at STOP; resumed launches continue to TOTAL
ATOL = 1e-5
FSDP4 = ['--config.parallel.fsdp=4']
DATA2_TENSOR2 = ['--config.parallel.data=2', '--config.parallel.tensor=2']
PMAP = ['--config.parallel.strategy=pmap']  # data=-1: every device


def train_args(steps: int = TOTAL) -> list[str]:
    return ['--config', f'experiments/lm.py:steps={TOTAL}', *TINY_LM,
            f'--config.optimizer.decay_steps={TOTAL}', '--config.optimizer.warmup_steps=1',
            '--config.train.checkpoint_every=0', '--config.evals.val.num_examples=16',
            f'--config.train.steps={steps}']


def resume(source, workdir, *mesh_args, devices: int, mesh: str) -> dict[int, float]:
    """Copies the stopped run `source` to `workdir`, resumes it to TOTAL under `mesh_args`
    on `devices` devices (its log must show `mesh`, e.g. 'data=1 x fsdp=1 x expert=1 x tensor=1');
    returns its losses of steps STOP+1 .. TOTAL."""
    shutil.copytree(source, workdir)
    proc = run_cli('train', '--workdir', str(workdir), *train_args(), *mesh_args,
                   devices=devices)
    assert f'resumed from {workdir}/checkpoints/{STOP}' in proc.stderr, proc.stderr[-3000:]
    assert f'mesh: {mesh} over {devices} cpu devices, 1 process(es)' in proc.stderr
    with open(workdir / 'config.json') as f:
        strategy = json.load(f)['parallel']['strategy']
    assert strategy == ('pmap' if PMAP[0] in mesh_args else 'mesh')
    losses = metric_series(workdir)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    return {s: losses[s] for s in range(STOP + 1, TOTAL + 1)}


def assert_continues(reference: dict, got: dict, case: str):
    """The resumed losses equal the uninterrupted run's within ATOL (prints the gap)."""
    gap = max(abs(got[s] - reference[s]) for s in got)
    print(f'{case}: max |loss difference| over steps {STOP + 1}..{TOTAL} = {gap:.3g}')
    np.testing.assert_allclose([got[s] for s in got], [reference[s] for s in got],
                               rtol=0, atol=ATOL, err_msg=case)


@pytest.fixture(scope='module')
def uninterrupted(tfds_dir, tmp_path_factory):
    """An uninterrupted fsdp=4 run on 4 devices to TOTAL, checkpointed every STOP steps."""
    workdir = tmp_path_factory.mktemp('uninterrupted')
    run_cli('train', '--workdir', str(workdir), *train_args(), *FSDP4,
            f'--config.train.checkpoint_every={STOP}', devices=4)
    return workdir


@pytest.fixture(scope='module')
def reference(uninterrupted):
    """Losses of steps STOP+1 .. TOTAL of the uninterrupted run."""
    losses = metric_series(uninterrupted)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    return {s: losses[s] for s in range(STOP + 1, TOTAL + 1)}


@pytest.fixture(scope='module')
def fsdp_stopped(uninterrupted, tmp_path_factory):
    """The uninterrupted run as it stood after saving step STOP (its checkpoint of STOP,
    its metrics up to STOP): what a launch of it stopped at STOP leaves, the schedule being
    pinned to TOTAL (tests/test_reliability.py stops real launches)."""
    workdir = tmp_path_factory.mktemp('fsdp_stopped') / 'run'
    shutil.copytree(uninterrupted, workdir)
    for name in os.listdir(workdir / 'checkpoints'):
        if name.isdigit() and int(name) > STOP:
            shutil.rmtree(workdir / 'checkpoints' / name)
    assert os.listdir(workdir / 'checkpoints') == [str(STOP)]
    metrics = workdir / 'metrics.jsonl'
    rows = [line for line in metrics.read_text().splitlines()
            if json.loads(line)['step'] <= STOP]
    metrics.write_text(''.join(line + '\n' for line in rows))
    return workdir


# ----------------------------------------------------------------------------- 1. meshes

@pytest.mark.parametrize('mesh_args, devices, mesh', [
    (DATA2_TENSOR2, 4, 'data=2 x fsdp=1 x expert=1 x tensor=2'),
    ([], 1, 'data=1 x fsdp=1 x expert=1 x tensor=1'),
], ids=['data2_tensor2', 'one_device'])
def test_fsdp_checkpoint_resumes_on_another_mesh(reference, fsdp_stopped, tmp_path,
                                                 mesh_args, devices, mesh):
    got = resume(fsdp_stopped, tmp_path / 'resumed', *mesh_args, devices=devices, mesh=mesh)
    assert_continues(reference, got, f'fsdp=4 -> {" ".join(mesh_args) or "1 device"}')


# Restores the latest checkpoint of argv[1] the way `jaxbig train` resumes (whole state,
# into the target shardings) and the way `load_run` reads params, under each mesh
# 'DATAxFSDPxTENSOR' of argv[3:]; checks every leaf landed in its target sharding and
# writes the arrays to the npz argv[2]; prints {mesh: number of leaves split over devices}.
RESTORE = r'''
import json, sys
import flax.linen as nn, jax, numpy as np
from jaxbig import checkpoint, run

workdir, out = sys.argv[1:3]
arrays, split = {}, {}
for mesh in sys.argv[3:]:
    config = run.read_config(workdir)
    config.parallel.update(dict(zip(('data', 'fsdp', 'tensor'), map(int, mesh.split('x')))))
    s = run.setup(config, workdir)
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
        ckpt = checkpoint.Checkpointer(workdir)
        state = ckpt.restore_latest(
            checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
        ckpt.close()
        params = run.load_run(workdir, params_shardings=s.state_shardings.params).params
    split[mesh] = 0
    for kind, tree, target in (('state', state, s.state_shardings),
                               ('params', params, s.state_shardings.params)):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        assert len(leaves) == len(jax.tree.leaves(target))
        for (path, leaf), sharding in zip(leaves, jax.tree.leaves(target)):
            name = jax.tree_util.keystr(path, simple=True, separator='/')
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
                mesh, name, leaf.sharding, sharding)
            split[mesh] += not leaf.sharding.is_fully_replicated
            arrays[f'{mesh}|{kind}|{name}'] = np.asarray(leaf)
np.savez(out, **arrays)
print(json.dumps(split))
'''


def restore_under(workdir, out, meshes, devices: int) -> dict:
    """Runs RESTORE with `devices` simulated devices; returns {mesh|kind|path: array}."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
    env.setdefault('JAX_PLATFORMS', 'cpu')
    proc = subprocess.run([sys.executable, '-c', RESTORE, str(workdir), str(out), *meshes],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    split = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as f:
        return {'split': split, **{k: f[k] for k in f.files}}


def test_restored_arrays_equal_the_saved_ones_bit_for_bit(fsdp_stopped, tmp_path):
    """The fsdp=4 checkpoint read into fsdp=4 and data=2 x tensor=2 shardings on 4 devices
    and into 1 device (whole state as `train` resumes, params as `load_run`) equals its
    host (numpy) read byte for byte, and every array is in the target sharding."""
    saved, step = checkpoint.restore_params(str(fsdp_stopped))
    assert step == STOP
    saved = {k: v for k, v in _flat(saved)}
    four = restore_under(fsdp_stopped, tmp_path / 'four.npz', ['1x4x1', '2x1x2'], devices=4)
    one = restore_under(fsdp_stopped, tmp_path / 'one.npz', ['1x1x1'], devices=1)
    assert four['split']['1x4x1'] > 0 and four['split']['2x1x2'] > 0  # really resharded
    assert one['split']['1x1x1'] == 0
    restored = {k: v for part in (four, one) for k, v in part.items() if k != 'split'}
    meshes = ['1x4x1', '2x1x2', '1x1x1']
    for mesh in meshes:
        for name, array in saved.items():
            for key in (f'{mesh}|params|{name}', f'{mesh}|state|params/{name}'):
                got = restored[key]
                assert got.dtype == array.dtype and got.shape == array.shape, key
                assert got.tobytes() == array.tobytes(), key
    # the rest of the state (optimizer moments, step, rng) too: the same bytes on every mesh
    state_keys = [k.split('|', 1)[1] for k in restored if k.startswith('1x4x1|state|')]
    assert len(state_keys) > 2 * len(saved)  # params + Adam's two moments, at least
    for key in state_keys:
        for mesh in meshes[1:]:
            assert restored[f'{mesh}|{key}'].tobytes() == restored[f'1x4x1|{key}'].tobytes(), (
                mesh, key)
    assert int(restored['1x1x1|state|step']) == STOP


def _flat(tree, prefix=''):
    """('a/b/kernel', array) for every leaf of a nested dict of arrays."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f'{prefix}{k}/')
        else:
            yield f'{prefix}{k}', v


# ----------------------------------------------------------------------------- 2. processes

def train_two_processes(workdir, *args, timeout: int = 400):
    """`jaxbig train ARGS` as two processes x 2 CPU devices on 127.0.0.1 (4 devices in all),
    as launch/local.sh starts them; logs in workdir.<i>.log."""
    procs = start_processes(workdir, ['train', '--workdir', str(workdir), *args],
                            local_devices=2)
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.log.close()
    logs = process_logs(workdir)
    assert codes == [0, 0], (codes, [log[-3000:] for log in logs])
    assert all('2 process(es)' in log for log in logs)


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(reference, tmp_path):
    """fsdp=4 over two processes x 2 devices, stopped at STOP; resumed in 1 process on 1
    device."""
    stopped = tmp_path / 'two_processes'
    train_two_processes(stopped, *train_args(STOP), *FSDP4)
    assert os.listdir(stopped / 'checkpoints') == [str(STOP)]
    got = resume(stopped, tmp_path / 'resumed', devices=1,
                 mesh='data=1 x fsdp=1 x expert=1 x tensor=1')
    assert_continues(reference, got, '2 processes fsdp=4 -> 1 process, 1 device')


# ----------------------------------------------------------------------------- 3. strategies

def test_mesh_checkpoint_resumes_under_pmap(reference, fsdp_stopped, tmp_path):
    got = resume(fsdp_stopped, tmp_path / 'resumed', *PMAP, devices=4,
                 mesh='data=4 x fsdp=1 x expert=1 x tensor=1')
    assert_continues(reference, got, 'mesh fsdp=4 -> pmap on 4 devices')


@pytest.mark.slow
def test_pmap_checkpoint_resumes_under_mesh(reference, tmp_path):
    stopped = tmp_path / 'pmap'
    run_cli('train', '--workdir', str(stopped), *train_args(STOP), *PMAP, devices=4)
    assert os.listdir(stopped / 'checkpoints') == [str(STOP)]
    got = resume(stopped, tmp_path / 'resumed', *FSDP4, devices=4,
                 mesh='data=1 x fsdp=4 x expert=1 x tensor=1')
    assert_continues(reference, got, 'pmap on 4 devices -> mesh fsdp=4')
