"""End to end through the CLI: sharded steps equal one device, exact resume, outputs."""
import json
import os
import re

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
    with open(full / 'config.json') as f:  # the resolved config, overrides applied
        saved = json.load(f)
    assert saved['optimizer']['decay_steps'] == 6 and saved['train']['checkpoint_every'] == 3
    assert saved['model']['embed_dim'] == 64 and saved['train']['steps'] == 6
    # throughput: log_every=1, so tokens/s = steps/s x tokens per batch (16 rows x 32 tokens)
    tokens, steps = metric_series(full, 'train/tokens_per_sec'), metric_series(full,
                                                                              'train/steps_per_sec')
    assert sorted(tokens) == sorted(steps) == list(range(1, 7))
    for step in tokens:
        assert tokens[step] > 0
        np.testing.assert_allclose(tokens[step] / steps[step], 16 * 32, rtol=1e-9)
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


def startup_log(stderr: str) -> tuple[str, float, float]:
    """(mesh description, per-device params MB, optimizer state MB) from train.py's log."""
    mesh = re.search(r'mesh: (.*)', stderr)
    sizes = re.search(r'per device: params ([\d.]+) MB, optimizer state ([\d.]+) MB', stderr)
    assert mesh and sizes, stderr[-3000:]
    return mesh.group(1), float(sizes.group(1)), float(sizes.group(2))


@pytest.fixture(scope='module')
def one_device(tfds_dir, tmp_path_factory):
    ref = tmp_path_factory.mktemp('one_device')
    proc = run_cli('train', '--workdir', str(ref), *MESH_ARGS)
    return metric_series(ref), startup_log(proc.stderr)


@pytest.mark.parametrize('mesh', [
    pytest.param((8, 1, 1), marks=pytest.mark.slow),  # data only: pmap and invariance cover it
    pytest.param((2, 4, 1), marks=pytest.mark.slow),  # data x fsdp: (2, 2, 2) covers it
    pytest.param((1, 8, 1), marks=pytest.mark.slow),  # fsdp only: (2, 2, 2) covers it
    (2, 2, 2)])
def test_sharded_losses_match_one_device(one_device, tmp_path, mesh):
    """Same losses on every mesh; the log shows the requested mesh and that parameters and
    optimizer state are split fsdp x tensor ways (the tiny GPT's norms, 1 % of it, are not
    split by tensor; sizes are logged to 0.01 MB)."""
    one_device_losses, (one_mesh, one_params, one_opt) = one_device
    assert one_mesh == 'data=1 x fsdp=1 x expert=1 x tensor=1 over 1 cpu devices, 1 process(es)'
    data, fsdp, tensor = mesh
    sharded = tmp_path / 'sharded'
    proc = run_cli('train', '--workdir', str(sharded), *MESH_ARGS, devices=8,
                   *[f'--config.parallel.{k}={v}' for k, v in
                     (('data', data), ('fsdp', fsdp), ('tensor', tensor))])
    a, b = one_device_losses, metric_series(sharded)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)
    got_mesh, params, opt = startup_log(proc.stderr)
    assert got_mesh == f'data={data} x fsdp={fsdp} x expert=1 x tensor={tensor} over 8 cpu ' \
        'devices, 1 process(es)'
    split = fsdp * tensor
    assert abs(params - one_params / split) <= 0.01 + 0.03 * one_params / split, (params, mesh)
    assert abs(opt - one_opt / split) <= 0.01 + 0.03 * one_opt / split, (opt, mesh)


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
