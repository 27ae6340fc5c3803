"""Two processes x 4 CPU devices on 127.0.0.1 (launch/local.sh) train like one process with
8 devices; SIGTERM to the launcher (forwarded to every process), or to one process only
(as when a scheduler preempts one host: `safety.StopRequest.agreed` spreads the request),
stops every process at one step with a checkpoint, and a relaunch finishes with the
uninterrupted losses; a JSONL / Parquet source (data.name='files') gives two processes one
process's losses. Slow: each multi-process run compiles in every process and runs
gloo collectives on a 2-core machine (~1 min per launch)."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import (FAST_COMPILE, REPO, TINY_LM, metric_series, process_logs, run_cli,
                      start_processes)

pytestmark = pytest.mark.slow

STEPS = 8
ARGS = ['--config', f'experiments/lm.py:steps={STEPS}', *TINY_LM,
        '--config.train.checkpoint_every=0']


def launch(workdir, *extra) -> subprocess.Popen:
    """launch/local.sh -n 2 -d 4 -- ARGS --workdir WORKDIR, output in workdir/../<name>.log."""
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)  # devices: local.sh -d 4
    env.update(PYTHON=sys.executable, JAX_PLATFORMS='cpu')
    log = open(f'{workdir}.log', 'w')  # noqa: SIM115 (closed in finish)
    proc = subprocess.Popen(
        ['bash', 'launch/local.sh', '-n', '2', '-d', '4', '--', *ARGS, '--workdir', str(workdir),
         *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, workdir, timeout=400) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        proc.log.close()


def log_tail(workdir) -> str:
    with open(f'{workdir}.log') as f:
        return f.read()[-6000:]


@pytest.fixture(scope='module')
def reference(tfds_dir, tmp_path_factory):
    """Losses of one process with 8 devices (data=8)."""
    ref = tmp_path_factory.mktemp('one_process')
    run_cli('train', '--workdir', str(ref), *ARGS, devices=8, timeout=400)
    return metric_series(ref)


@pytest.mark.parametrize('strategy', ['mesh', 'pmap'])
def test_two_processes_match_one_process(reference, tmp_path, strategy):
    workdir = tmp_path / 'two'
    rc = finish(launch(workdir, f'--config.parallel.strategy={strategy}'), workdir)
    assert rc == 0, log_tail(workdir)
    log = log_tail(workdir)
    assert '[0] ' in log and '[1] ' in log and '2 process(es)' in log
    got = metric_series(workdir)
    assert sorted(got) == sorted(reference) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in reference], list(reference.values()),
                               rtol=0, atol=1e-5)
    assert os.listdir(workdir / 'checkpoints') == [str(STEPS)]


def test_sigterm_saves_and_relaunch_continues(reference, tmp_path):
    workdir = tmp_path / 'split'
    proc = launch(workdir)
    deadline = time.monotonic() + 300
    while len(_rows(workdir)) < 2:  # signal once two steps are logged
        assert proc.poll() is None, log_tail(workdir)
        assert time.monotonic() < deadline, log_tail(workdir)
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    rc = finish(proc, workdir)
    assert rc == 0, log_tail(workdir)
    saved = [int(s) for s in os.listdir(workdir / 'checkpoints')]
    assert len(saved) == 1 and 2 <= saved[0] < STEPS, (saved, log_tail(workdir))
    assert 'rerun the same command to resume' in log_tail(workdir)

    rc = finish(launch(workdir), workdir)  # relaunch: resumes at the saved step
    assert rc == 0, log_tail(workdir)
    assert 'resumed from' in log_tail(workdir)
    got = metric_series(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in reference], list(reference.values()),
                               rtol=0, atol=1e-5)


def launch_direct(workdir) -> list[subprocess.Popen]:
    """The two processes of `launch` started here (no launcher to forward signals), each
    logging to workdir.<i>.log."""
    return start_processes(workdir, ['train', *ARGS, '--workdir', str(workdir)],
                           local_devices=4)


def direct_logs(workdir) -> list[str]:
    return process_logs(workdir)


def test_sigterm_to_one_process_stops_both_at_one_step(reference, tmp_path):
    workdir = tmp_path / 'one_signal'
    procs = launch_direct(workdir)
    try:
        deadline = time.monotonic() + 300
        while len(_rows(workdir)) < 2:  # signal once two steps are logged
            assert all(p.poll() is None for p in procs), direct_logs(workdir)
            assert time.monotonic() < deadline, direct_logs(workdir)
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)  # process 1 only; process 0 is not signalled
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.log.close()
    logs = direct_logs(workdir)
    assert codes == [0, 0], (codes, [log[-3000:] for log in logs])
    assert 'received signal' in logs[1] and 'received signal' not in logs[0]
    stops = [re.findall(r'stopped at step (\d+)', log) for log in logs]
    assert stops[0] and stops[0] == stops[1], stops  # both stopped at the same step
    saved = [int(s) for s in os.listdir(workdir / 'checkpoints')]
    assert saved == [int(stops[0][0])] and 2 <= saved[0] < STEPS, (saved, stops)

    rc = finish(launch(workdir), workdir)  # relaunch: resumes at the saved step
    assert rc == 0, log_tail(workdir)
    assert 'resumed from' in log_tail(workdir)
    got = metric_series(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in reference], list(reference.values()),
                               rtol=0, atol=1e-5)


def _rows(workdir) -> dict:
    try:
        return metric_series(workdir)
    except (FileNotFoundError, ValueError):
        return {}


def test_two_processes_on_a_files_source_match_one_process(tfds_dir, tmp_path):
    """A JSONL / Parquet source (data.name='files', its caches built by process 0 while the
    other waits) gives two processes the batches one process has: the same losses."""
    from test_file_sources_cli import _every_format

    _every_format(tmp_path / 'corpus')
    files = [f'--config.data.path={tmp_path / "corpus"}', '--config.data.splits=validation=0.2',
             f'--config.data.data_dir={tmp_path / "cache"}', '--config.evals.val.num_examples=16']
    args = ['--config', f'experiments/lm.py:data=files,steps={STEPS}', *TINY_LM,
            '--config.train.checkpoint_every=0', *files]
    one = tmp_path / 'one'
    run_cli('train', '--workdir', str(one), *args, devices=8, timeout=400)
    two = tmp_path / 'two'
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, PYTHON=sys.executable, JAX_PLATFORMS='cpu')
    with open(f'{two}.log', 'w') as log:
        rc = subprocess.run(['bash', 'launch/local.sh', '-n', '2', '-d', '4', '--',
                             *args, '--workdir', str(two)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=400).returncode
    assert rc == 0, log_tail(two)
    assert '2 process(es)' in log_tail(two)
    want, got = metric_series(one), metric_series(two)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=0, atol=1e-5)
