"""End to end through the CLI: sharded steps equal one device, exact resume, outputs."""
import os

import numpy as np
import pytest

from conftest import TINY_LM, metric_series, run_cli

LM = 'experiments/lm.py'


def test_outputs_and_resume_is_exact(tfds_dir, tmp_path):
    common = ['--config', f'{LM}:steps=6', *TINY_LM, '--config.optimizer.decay_steps=6',
              '--config.train.checkpoint_every=3']
    full = tmp_path / 'full'
    run_cli('train', '--workdir', str(full), *common)
    for name in ('config.json', 'metrics.jsonl', 'loss_curve.png'):
        assert (full / name).stat().st_size > 0, name
    assert any(n.startswith('events.out.tfevents') for n in os.listdir(full))
    assert sorted(os.listdir(full / 'checkpoints')) == ['3', '6']

    split = tmp_path / 'split'
    run_cli('train', '--workdir', str(split), *common, '--config.train.steps=3')
    first = metric_series(split)
    assert sorted(first) == [1, 2, 3]
    run_cli('train', '--workdir', str(split), *common)  # relaunch: resumes at step 3
    a, b = metric_series(full), metric_series(split)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert a[step] == b[step], (step, a[step], b[step])


MESH_ARGS = ['--config', f'{LM}:steps=4', *TINY_LM, '--config.train.checkpoint_every=0']


@pytest.fixture(scope='module')
def one_device_losses(tfds_dir, tmp_path_factory):
    ref = tmp_path_factory.mktemp('one_device')
    run_cli('train', '--workdir', str(ref), *MESH_ARGS)
    return metric_series(ref)


@pytest.mark.parametrize('mesh', [(8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_losses_match_one_device(one_device_losses, tmp_path, mesh):
    args = MESH_ARGS
    data, fsdp, tensor = mesh
    sharded = tmp_path / 'sharded'
    run_cli('train', '--workdir', str(sharded), *args, devices=8,
            *[f'--config.parallel.{k}={v}' for k, v in
              (('data', data), ('fsdp', fsdp), ('tensor', tensor))])
    a, b = one_device_losses, metric_series(sharded)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)


def test_refuses_other_experiment_in_workdir(tfds_dir, tmp_path):
    args = ['--config', f'{LM}:steps=1', *TINY_LM]
    run_cli('train', '--workdir', str(tmp_path), *args)
    proc = run_cli('train', '--workdir', str(tmp_path), *args, '--config.model.embed_dim=32',
                   check=False)
    assert proc.returncode == 2
    assert 'model.embed_dim' in proc.stderr and '--force' in proc.stderr


def test_mesh_larger_than_devices_is_one_line_error(tfds_dir, tmp_path):
    proc = run_cli('train', '--workdir', str(tmp_path), '--config', f'{LM}:steps=1', *TINY_LM,
                   '--config.parallel.data=4', check=False, devices=2)
    assert proc.returncode == 2
    assert 'needs 4 devices but 2 are available' in proc.stderr.strip().splitlines()[-1]
