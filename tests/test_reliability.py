"""Bad input gives one-line errors; NaN guard; SIGTERM saves; damaged checkpoints skipped;
kill -9 at random moments loses nothing (slow)."""
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_LM, metric_series, run_cli, xla_flags
from jaxbig import cli, train

LM = 'experiments/lm.py'

BAD_CONFIGS = [
    (['--config.optimizer.lrr=1'], "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'"),
    (['--config.optimizer.lr=-1'], 'optimizer.lr=-1.0: must be > 0'),
    (['--config.optimizer.lr=abc'], "optimizer.lr: expected a number, got 'abc'"),
    (['--config.optimizer.name=lamb'], "optimizer.name='lamb'"),
    (['--config.optimizer.schedule=step'], "optimizer.schedule='step'"),
    (['--config.optimizer.weight_decay=-0.1'], 'optimizer.weight_decay=-0.1: must be >= 0'),
    (['--config.optimizer.min_lr_ratio=2'], 'optimizer.min_lr_ratio=2.0'),
    (['--config.optimizer.grad_accum_steps=3'], 'not divisible by optimizer.grad_accum_steps=3'),
    (['--config.train.batch_size=0'], 'train.batch_size=0: must be >= 1'),
    (['--config.train.steps=-5'], 'train.steps=-5: must be >= 1'),
    (['--config.train.log_every=0'], 'train.log_every=0'),
    (['--config.train.steps_per_call=0'], 'train.steps_per_call=0: must be >= 1'),
    (['--config.train.eval_every=-1'], 'train.eval_every=-1'),
    (['--config.train.stepz=3'], "did you mean 'train.steps'"),
    (['--config.train.best_mode=best'], "train.best_mode='best': expected 'max' or 'min'"),
    (['--config.train.patience=-1'], 'train.patience=-1: must be >= 0'),
    (['--config.model.scan_layers=maybe'], 'expected a boolean'),
    (['--config.parallel.data=4'], 'needs 4 devices but 1 are available'),
    (['--config.parallel.data=-1', '--config.parallel.fsdp=-1'], 'only one of data/fsdp/expert/tensor'),
    (['--config.parallel.tensor=0'], 'mesh sizes must be positive or -1'),
    (['--config.parallel.rules=[["batch", "nope"]]'], "unknown mesh axis 'nope'"),
    (['--config.model.name=nope'], "model.name='nope': no module jaxbig.models.nope"),
    (['--config.model.remat=sometimes'], 'sometimes'),
    (['--config.loss.name=nope'], "loss.name='nope': no module jaxbig.losses.nope"),
    (['--config.data.pipeline=nope'], "data.pipeline='nope'"),
    (['--config.data.name=lm1b'], "data.name='lm1b': TFDS dataset not prepared"),
    (['--config.data.name=folder', '--config.data.path=/nonexistent/texts'], 'data.path'),
    (['--config.data.seq_len=0'], 'data.seq_len=0'),
    (['--config.evals.val.type=nope'], "evals.val.type='nope'"),
    (['--config.evals.val.num_examples=-1'], 'evals.val.num_examples=-1'),
]


@pytest.mark.parametrize('overrides, expected', BAD_CONFIGS,
                         ids=[o[0].split('=')[0][9:] for o, _ in BAD_CONFIGS])
def test_bad_config_names_the_problem(tfds_dir, tmp_path, overrides, expected):
    with pytest.raises(ValueError) as e:
        config = cli.load_config(f'{LM}:steps=2', [*TINY_LM, *overrides])
        train.train(config, str(tmp_path / 'w'))
    message = str(e.value)
    assert expected in message, message
    assert '\n' not in message.strip()
    assert not (tmp_path / 'w').exists()  # nothing left behind: the corrected command starts clean
    assert len(BAD_CONFIGS) >= 20


def test_bad_configs_leave_the_workdir_as_found_then_the_corrected_command_trains(
        tfds_dir, tmp_path):
    """Every error of the table in one workdir (fresh, then existing but empty): each leaves
    it as it was, so the corrected command is not refused as 'a different experiment'."""
    workdir = tmp_path / 'w'
    for make_first in (False, True):
        if make_first:
            workdir.mkdir()
        for overrides, _ in BAD_CONFIGS:
            with pytest.raises(ValueError):
                train.train(cli.load_config(f'{LM}:steps=2', [*TINY_LM, *overrides]), str(workdir))
            assert workdir.exists() == make_first and (not make_first or not any(workdir.iterdir()))
    train.train(cli.load_config(f'{LM}:steps=2', TINY_LM), str(workdir))
    assert len(metric_series(str(workdir))) == 2


def test_nan_guard_stops_before_checkpointing_or_evaluating(tfds_dir, tmp_path):
    # Step 5 is poisoned (loss and gradients NaN) and is an eval step but not a log step: the
    # guard must fire before the evaluator sees the NaN params or keeps them as best.
    proc = run_cli('train', '--workdir', str(tmp_path), '--config', f'{LM}:steps=8', *TINY_LM,
                   '--config.train.debug_nan_at_step=5', '--config.train.log_every=4',
                   '--config.train.checkpoint_every=2', '--config.train.eval_every=5',
                   '--config.evals.val.num_examples=16', '--config.train.best_metric=val/loss',
                   '--config.train.best_mode=min', check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert 'non-finite train/total_loss=nan at step 5' in last, last
    assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints')) == [2, 4]
    assert not metric_series(tmp_path, 'val/loss')
    best = tmp_path / 'best' / 'checkpoints'
    assert not best.exists() or not os.listdir(best)


def test_skip_nonfinite_steps_counts_and_continues(tfds_dir, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), '--config', f'{LM}:steps=4', *TINY_LM,
            '--config.train.debug_nan_at_step=2', '--config.train.skip_nonfinite_steps=true')
    assert metric_series(tmp_path, 'train/skipped_steps')[4] == 1.0
    total, grad_norm = metric_series(tmp_path, 'train/total_loss'), metric_series(
        tmp_path, 'train/grad_norm')
    assert math.isnan(total[2]) and math.isnan(grad_norm[2])  # the poison reached the grads
    params = metric_series(tmp_path, 'train/param_norm')
    assert params[2] == params[1]  # the skipped update left the params as they were
    assert params[3] != params[2] and all(math.isfinite(params[s]) for s in (1, 2, 3, 4))
    assert all(math.isfinite(total[s]) for s in (1, 3, 4))


def _popen_train(workdir, *args, log=None):
    """Starts `jaxbig train` on the tiny LM; stderr to the file `log` (read while it runs)
    or a pipe."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    return subprocess.Popen([sys.executable, '-m', 'jaxbig', 'train', '--workdir', str(workdir),
                             '--config', LM, *TINY_LM, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if log is None else open(log, 'w'), text=True)


def _wait_for(condition, proc, what, timeout=180, poll=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f'{what} never happened (exit code {proc.poll()})')


def _logged_steps(workdir):
    path = os.path.join(workdir, 'metrics.jsonl')
    return [json.loads(l)['step'] for l in open(path)] if os.path.exists(path) else []


def _wait_for_logged_step(workdir, step, proc, timeout=180):
    _wait_for(lambda: any(s >= step for s in _logged_steps(workdir)), proc,
              f'logging step {step}', timeout)


def _checkpoint_steps(workdir):
    path = os.path.join(workdir, 'checkpoints')
    return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


@pytest.mark.parametrize('signals', [
    (signal.SIGTERM,),
    pytest.param((signal.SIGTERM, signal.SIGINT), marks=pytest.mark.slow),  # then resumed
], ids=['sigterm', 'sigterm_then_sigint'])
def test_sigterm_or_sigint_saves_current_step_and_exits_zero(tfds_dir, tmp_path, signals):
    args = ['--config.train.steps=100000', '--config.train.checkpoint_every=0']
    for n, sig in enumerate(signals):
        before = (_checkpoint_steps(tmp_path) or [0])[-1]
        proc = _popen_train(tmp_path, *args, log=tmp_path / f'{n}.log')
        _wait_for_logged_step(tmp_path, before + 3, proc)
        proc.send_signal(sig)
        proc.wait(timeout=120)
        err = (tmp_path / f'{n}.log').read_text()
        assert proc.returncode == 0, err[-2000:]
        assert n == 0 or f'resumed from {tmp_path}/checkpoints/{before}' in err
        saved, logged = _checkpoint_steps(tmp_path)[-1], max(_logged_steps(tmp_path))
        assert saved >= logged >= before + 3 and f'stopped at step {saved}' in err
        assert not (tmp_path / 'checkpoints_damaged').exists()


@pytest.mark.slow
def test_second_sigint_aborts_at_once(tfds_dir, tmp_path):
    proc = _popen_train(tmp_path, '--config.train.steps=100000',
                        '--config.train.checkpoint_every=0', log=tmp_path / 'twice.log')
    _wait_for_logged_step(tmp_path, 3, proc)
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: 'received signal 2' in (tmp_path / 'twice.log').read_text(), proc,
              'the first SIGINT', poll=0.002)
    proc.send_signal(signal.SIGINT)  # while the first one's save is under way
    proc.wait(timeout=120)
    err = (tmp_path / 'twice.log').read_text()
    assert proc.returncode != 0 and 'KeyboardInterrupt' in err, err[-2000:]


def _damage(checkpoint_dir):
    """Truncates every data file of a checkpoint (as a crashed disk or a careless `:>` would)."""
    for root, _, files in os.walk(checkpoint_dir):
        for name in files:
            if 'metadata' not in name:
                open(os.path.join(root, name), 'w').close()


def test_damaged_newest_checkpoint_is_skipped(tfds_dir, tmp_path):
    common = ['--config', f'{LM}:steps=6', *TINY_LM, '--config.optimizer.decay_steps=6',
              '--config.train.checkpoint_every=2']
    full = tmp_path / 'full'
    run_cli('train', '--workdir', str(full), *common)
    part = tmp_path / 'part'
    run_cli('train', '--workdir', str(part), *common, '--config.train.steps=4')
    _damage(part / 'checkpoints' / '4')
    proc = run_cli('train', '--workdir', str(part), *common)
    assert 'checkpoints/4 is damaged' in proc.stderr
    assert metric_series(part) == metric_series(full)


@pytest.fixture(scope='module')
def one_step_run(tfds_dir, tmp_path_factory):
    """A workdir holding the tiny LM's checkpoint after 1 step; tests copy it."""
    path = tmp_path_factory.mktemp('one_step')
    run_cli('train', '--workdir', str(path), '--config', f'{LM}:steps=1', *TINY_LM)
    return path


def test_incompatible_checkpoint_is_one_line_error_and_left_alone(one_step_run, tmp_path):
    workdir = tmp_path / 'w'
    shutil.copytree(one_step_run, workdir)
    proc = run_cli('train', '--workdir', str(workdir), '--config', f'{LM}:steps=2', *TINY_LM,
                   '--config.model.mlp_dim=96', '--force', check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('jaxbig: error: checkpoint') and 'incompatible model' in last, last
    assert ('params/layers_0/mlp/down/kernel has shape (128, 64) there but (96, 64) in this '
            'model' in last), last
    assert _checkpoint_steps(workdir) == [1]
    assert not (workdir / 'checkpoints_damaged').exists()


def test_force_resumes_a_workdir_of_another_experiment(one_step_run, tmp_path):
    workdir = tmp_path / 'w'
    shutil.copytree(one_step_run, workdir)
    other = ['--config', f'{LM}:steps=2', *TINY_LM, '--config.loss.z_loss=0.001']
    refused = run_cli('train', '--workdir', str(workdir), *other, check=False)
    assert refused.returncode == 2 and 'loss.z_loss' in refused.stderr
    proc = run_cli('train', '--workdir', str(workdir), *other, '--force')
    assert f'resumed from {workdir}/checkpoints/1' in proc.stderr
    assert sorted(metric_series(workdir)) == [1, 2] and _checkpoint_steps(workdir)[-1] == 2


def test_batch_not_divisible_by_data_parallel_size_is_one_line_error(tfds_dir, tmp_path):
    proc = run_cli('train', '--workdir', str(tmp_path), '--config', f'{LM}:steps=1', *TINY_LM,
                   '--config.train.batch_size=15', devices=2, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        'jaxbig: error: train.batch_size=15 is not divisible by the data-parallel size '
        'data*fsdp=2')


def _orbax_tmp_dirs(workdir):
    try:
        return [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_exactly(tfds_dir, tmp_path):
    """Each trial relaunches, waits until it has resumed (every trial but the first) or
    has written its first checkpoint (the first) and trained a random number of steps, then
    SIGKILLs it: either a random moment later, or while orbax is writing a checkpoint (its
    temporary directory is there, and still is after the kill). At least 6 trials, at least 2
    of them mid-save."""
    steps = 400
    common = [f'--config.train.steps={steps}', f'--config.optimizer.decay_steps={steps}',
              '--config.train.checkpoint_every=7']
    full = tmp_path / 'full'
    run_cli('train', '--workdir', str(full), '--config', LM, *TINY_LM, *common)
    killed = tmp_path / 'killed'
    rng = random.Random(0)
    trials, mid_save = 0, 0
    while trials < 6 or mid_save < 2:
        assert trials < 20, f'only {mid_save} of {trials} kills landed during a save'
        log = tmp_path / f'trial{trials}.log'
        resumable = bool(_checkpoint_steps(killed))
        rows = len(_logged_steps(killed))
        proc = _popen_train(killed, *common, log=log)
        if resumable:
            _wait_for(lambda: 'resumed from' in log.read_text(), proc, 'resuming')
        else:
            _wait_for(lambda: _checkpoint_steps(killed), proc, 'a first checkpoint')
        # Past compilation, a random number of steps into this launch's training.
        more = rng.randint(1, 20)
        _wait_for(lambda: len(_logged_steps(killed)) >= rows + more, proc, f'{more} steps')
        if trials % 2:  # during a save, at a random point of it
            _wait_for(lambda: _orbax_tmp_dirs(killed), proc, 'a save', timeout=60)
            time.sleep(rng.uniform(0.0, 0.05))
        else:
            time.sleep(rng.uniform(0.0, 1.0))
        assert proc.poll() is None, 'the run finished before it was killed; raise `steps`'
        proc.kill()
        proc.wait()
        mid_save += bool(_orbax_tmp_dirs(killed))  # relaunches clear these before resuming
        trials += 1
    log = tmp_path / 'last.log'
    proc = _popen_train(killed, *common, log=log)
    proc.wait(timeout=600)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert 'resumed from' in log.read_text() and not _orbax_tmp_dirs(killed)
    assert metric_series(killed) == metric_series(full)
    assert sorted(metric_series(killed)) == list(range(1, steps + 1))


@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MB tmpfs: room for about one checkpoint of the test model (needs mount rights)."""
    path = tmp_path / 'disk'
    path.mkdir()
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2500k', 'tmpfs', str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f'cannot mount a small tmpfs here: {proc.stderr.strip()}')
    yield path
    subprocess.run(['umount', str(path)], check=False)


def test_disk_full_during_save_keeps_previous_checkpoint(tfds_dir, small_disk):
    workdir = small_disk / 'run'
    proc = run_cli('train', '--workdir', str(workdir), '--config', f'{LM}:steps=8', *TINY_LM,
                   '--config.train.checkpoint_every=2', '--config.train.log_every=2',
                   check=False, subprocess_=True)  # its writer threads die with the process
    assert proc.returncode != 0
    # orbax's writer threads log their own tracebacks; the CLI's one-line verdict is there.
    verdict = [l for l in proc.stderr.splitlines() if l.startswith('jaxbig: error:')]
    assert verdict and 'No space left' in verdict[-1], proc.stderr[-3000:]
    steps = sorted(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
    assert steps and steps[0] == 2
    # What survived restores: on a roomier disk the same command resumes and finishes.
    moved = small_disk.parent / 'moved'
    shutil.copytree(workdir, moved)
    resumed = run_cli('train', '--workdir', str(moved), '--config', f'{LM}:steps=8', *TINY_LM,
                      '--config.train.checkpoint_every=2', '--config.train.log_every=2')
    assert 'resumed from' in resumed.stderr
    assert max(metric_series(moved)) == 8


def test_keep_last_n_plus_every_kth(tfds_dir, tmp_path):
    run_cli('train', '--workdir', str(tmp_path), '--config', f'{LM}:steps=7', *TINY_LM,
            '--config.train.checkpoint_every=1', '--config.train.keep_checkpoints=2',
            '--config.train.keep_every=3')
    kept = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
    assert kept == [3, 6, 7], kept  # the last 2 (6, 7) plus every multiple of 3
