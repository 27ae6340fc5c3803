"""The launchers: dry-runs print the commands that matter; local.sh and slurm.sbatch also
run against stand-ins for python / srun / scontrol (fast, no JAX), so env, signal
forwarding and failure handling are checked for real."""
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import REPO

TRAIN = ['--config', 'experiments/lm.py:size=small', '--workdir', 'runs/my lm',
         '--config.optimizer.lr=1e-3']

# A stand-in for python: prints its environment and arguments; MODE=fail makes process 1
# exit 3; MODE=wait waits for SIGTERM, then reports it and exits 0.
FAKE_PYTHON = r'''#!/usr/bin/env bash
echo "id=$JAXBIG_PROCESS_ID n=$JAXBIG_NUM_PROCESSES coord=$JAXBIG_COORDINATOR \
cuda=${CUDA_VISIBLE_DEVICES:-} args=$*"
if [[ "${MODE:-}" == fail && "$JAXBIG_PROCESS_ID" == 1 ]]; then sleep 0.5; exit 3; fi
if [[ -n "${MODE:-}" ]]; then
    trap 'kill $s; echo "id=$JAXBIG_PROCESS_ID got TERM"; exit 0' TERM
    echo ready
    sleep 60 & s=$!
    wait $s
fi
'''


def _script(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def run(*cmd, env=None, **kwargs):
    return subprocess.run(cmd, check=False, cwd=REPO, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture
def fake_bin(tmp_path):
    """tmp/bin with `fakepy` (above), `srun` (runs its command as 2 tasks of one node) and
    `scontrol show hostnames` (gpu07, gpu08)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _script(bin_dir / 'fakepy', FAKE_PYTHON)
    _script(bin_dir / 'scontrol', '#!/usr/bin/env bash\necho gpu07\necho gpu08\n')
    _script(bin_dir / 'srun', r'''#!/usr/bin/env bash
echo "srun $*"
while [[ "$1" == --* ]]; do shift; done
for i in 0 1; do SLURM_NTASKS=2 SLURM_PROCID=$i SLURM_LOCALID=$i "$@"; done
''')
    return str(bin_dir)


# ------------------------------------------------------------------ local.sh

def test_local_dry_run():
    proc = run('bash', 'launch/local.sh', '--dry-run', '-n', '2', '-d', '4', '--port', '12345',
               '--', 'train', *TRAIN, env={'PYTHON': 'python3'})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line.startswith(f'JAXBIG_COORDINATOR=127.0.0.1:12345 JAXBIG_NUM_PROCESSES=2 '
                               f'JAXBIG_PROCESS_ID={i} python3 -m jaxbig train ')
        assert 'experiments/lm.py:size=small' in line and '--config.optimizer.lr=1e-3' in line
        assert r'runs/my\ lm' in line  # quoted, copy-pastable
        assert line.endswith('--config.parallel.local_device_count=4')
        assert ' train train ' not in line


@pytest.mark.parametrize('args', [[], ['-n', '0', '--', 'x'], ['-n', '2'], ['-n', '2', 'x']])
def test_local_usage_errors(args):
    proc = run('bash', 'launch/local.sh', *args)
    assert proc.returncode == 2 and 'usage' in proc.stderr


def test_local_runs_processes_with_ids_and_prefixes(fake_bin):
    proc = run('bash', 'launch/local.sh', '-n', '3', '--port', '23456', '--', *TRAIN,
               env={'PYTHON': os.path.join(fake_bin, 'fakepy')})
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.strip().splitlines())
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f'[{i}] id={i} n=3 coord=127.0.0.1:23456 ')
        assert line.endswith('args=-m jaxbig train ' + ' '.join(TRAIN))


def test_local_failure_stops_the_others_and_fails(fake_bin):
    t0 = time.monotonic()
    proc = run('bash', 'launch/local.sh', '-n', '2', '--port', '23457', '--', *TRAIN,
               env={'PYTHON': os.path.join(fake_bin, 'fakepy'), 'MODE': 'fail'})
    assert proc.returncode == 3
    assert 'process 1 exited with status 3' in proc.stderr
    assert '[0] id=0 got TERM' in proc.stdout
    assert time.monotonic() - t0 < 30


def test_local_forwards_sigterm_to_every_process(fake_bin, tmp_path):
    log = tmp_path / 'out'
    env = dict(os.environ, PYTHON=os.path.join(fake_bin, 'fakepy'), MODE='wait')
    with open(log, 'w') as out:
        proc = subprocess.Popen(['bash', 'launch/local.sh', '-n', '2', '--port', '23458', '--',
                                 *TRAIN], cwd=REPO, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while log.read_text().count('ready') < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    # Each process's output passes through its own prefixer, which may flush a moment
    # after local.sh has exited: wait for the lines, not for a fixed time.
    deadline = time.monotonic() + 10
    while not all(f'[{i}] id={i} got TERM' in log.read_text() for i in (0, 1)):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


# ------------------------------------------------------------------ tpu_pod.sh

def test_tpu_pod_dry_run_all():
    proc = run('bash', 'launch/tpu_pod.sh', '--dry-run', 'all', '--delete', '--name', 'pod1',
               '--zone', 'us-central2-b', '--project', 'proj', '--accelerator-type', 'v4-32',
               '--', *TRAIN)
    assert proc.returncode == 0, proc.stderr
    cmds = [line for line in proc.stdout.splitlines() if line.startswith('gcloud ')]
    create, clean, scp, install, train, delete = cmds
    where = '--zone=us-central2-b --project=proj'
    assert create.startswith(f'gcloud compute tpus tpu-vm create pod1 {where}')
    assert '--accelerator-type=v4-32' in create and '--version=' in create
    assert scp.startswith('gcloud compute tpus tpu-vm scp --recurse ')
    assert 'pod1:~/' in scp and '--worker=all' in scp
    for cmd in (clean, install, train):
        assert cmd.startswith(f'gcloud compute tpus tpu-vm ssh pod1 {where} --worker=all ')
    assert 'pip install -q -e .' in install and 'jax[tpu]' in install
    assert "python3 -m jaxbig train --config experiments/lm.py:size=small" in train
    assert "--workdir '\\''runs/my lm'\\''" in train  # quoted inside --command='...'
    assert '--config.optimizer.lr=1e-3 --config.parallel.distributed=true' in train
    assert delete == f'gcloud compute tpus tpu-vm delete pod1 {where} --quiet'


@pytest.mark.parametrize('command', ['create', 'copy', 'install', 'run', 'delete'])
def test_tpu_pod_dry_run_each_command(command):
    extra = ['--', *TRAIN] if command == 'run' else []
    proc = run('bash', 'launch/tpu_pod.sh', command, '--dry-run', '--name', 'p', '--zone', 'z',
               *extra)
    assert proc.returncode == 0, proc.stderr
    assert f'gcloud compute tpus tpu-vm {"scp" if command == "copy" else ""}' in proc.stdout
    if command == 'run':
        assert proc.stdout.count('gcloud ') == 1 and '--worker=all' in proc.stdout


def test_tpu_pod_copy_skips_files_deleted_in_the_work_tree(tmp_path):
    repo = tmp_path / 'repo'
    (repo / 'launch').mkdir(parents=True)
    shutil.copy(os.path.join(REPO, 'launch', 'tpu_pod.sh'), repo / 'launch')
    for name in ('kept.py', 'gone.py'):
        (repo / name).write_text('x = 1\n')
    git = lambda *a: subprocess.run(['git', *a], cwd=repo, check=True, capture_output=True)
    git('init', '-q')
    git('add', '.')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'init')
    (repo / 'gone.py').unlink()  # an unstaged deletion: still in `git ls-files --cached`
    proc = subprocess.run(['bash', 'launch/tpu_pod.sh', 'copy', '--dry-run', '--name', 'p',
                           '--zone', 'z'], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'gcloud compute tpus tpu-vm scp' in proc.stdout


def test_tpu_pod_usage_errors():
    assert run('bash', 'launch/tpu_pod.sh', 'run', '--name', 'p').returncode == 2
    proc = run('bash', 'launch/tpu_pod.sh', 'run', '--name', 'p', '--zone', 'z')
    assert proc.returncode == 2 and 'train arguments' in proc.stderr


# ------------------------------------------------------------------ slurm.sbatch

SLURM_ENV = {'SLURM_JOB_NODELIST': 'gpu[07-08]', 'SLURM_JOB_NUM_NODES': '2',
             'SLURM_JOB_ID': '4242', 'SLURM_GPUS_ON_NODE': '4'}


@pytest.mark.parametrize('how', ['env', 'flag'])
def test_slurm_dry_run(fake_bin, how):
    env = dict(SLURM_ENV, PATH=f'{fake_bin}:{os.environ["PATH"]}')
    args = ['--dry-run'] if how == 'flag' else []
    if how == 'env':
        env['DRY_RUN'] = '1'
    proc = run('bash', 'launch/slurm.sbatch', *args, *TRAIN, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'JAXBIG_COORDINATOR=gpu07:24242' in out  # first host from scontrol, port from job
    assert 'JAXBIG_NUM_PROCESSES=8' in out  # 2 nodes x 4 GPUs
    srun = next(line for line in out.splitlines() if line.startswith('srun '))
    assert '--nodes=2 --ntasks=8 --ntasks-per-node=4' in srun
    assert 'JAXBIG_PROCESS_ID=$SLURM_PROCID' in srun and 'CUDA_VISIBLE_DEVICES' in srun
    assert "-m jaxbig train" in srun and "'runs/my lm'" in srun


def test_slurm_process_per_node_dry_run(fake_bin):
    env = dict(SLURM_ENV, PATH=f'{fake_bin}:{os.environ["PATH"]}', PROCESS_PER='node')
    proc = run('bash', 'launch/slurm.sbatch', '--dry-run', *TRAIN, env=env)
    assert proc.returncode == 0, proc.stderr
    assert '--ntasks=2 --ntasks-per-node=1' in proc.stdout
    assert 'CUDA_VISIBLE_DEVICES' not in proc.stdout


def test_slurm_tasks_get_their_ids(fake_bin):
    env = dict(SLURM_ENV, PATH=f'{fake_bin}:{os.environ["PATH"]}', SLURM_JOB_NUM_NODES='1',
               GPUS_PER_NODE='2', PYTHON='fakepy', JAXBIG_PORT='3333')
    proc = run('bash', 'launch/slurm.sbatch', *TRAIN, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith('id=')]
    args = 'args=-m jaxbig train ' + ' '.join(TRAIN)
    assert lines == [f'id={i} n=2 coord=gpu07:3333 cuda={i} {args}' for i in (0, 1)]


def test_slurm_outside_allocation_fails():
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    proc = subprocess.run(['bash', 'launch/slurm.sbatch', *TRAIN], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and 'SLURM' in proc.stderr
