"""Shared fixtures: one prepared copy of the embedded corpus per test session, and a helper
that runs the real CLI in a subprocess (so XLA_FLAGS can set the device count)."""
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import ml_collections
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache per test session, shared with every subprocess the
# tests start (set before anything imports jax): a model one test compiled is read back,
# not recompiled, by the next test or `jaxbig` process (a GPT step: ~25 s -> ~3 s here).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix='jaxbig-test-xla-cache-')
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
_SESSION_START = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    """The suite's wall time, always printed, so the 10-minute budget stays visible."""
    minutes = (time.monotonic() - _SESSION_START) / 60
    terminalreporter.write_line(f'jaxbig test session wall time: {minutes:.1f} min '
                                '(budget: default suite <= 10 min on 2 cores)')

# A GPT small enough that a few steps compile and run in seconds on 2 CPU cores.
TINY_LM = [
    '--config.model.num_layers=2', '--config.model.embed_dim=64', '--config.model.num_heads=4',
    '--config.model.mlp_dim=128', '--config.data.seq_len=32', '--config.train.batch_size=16',
    '--config.train.log_every=1', '--config.train.eval_every=0',
]


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with `pystdlib` prepared; exported as TFDS_DATA_DIR for subprocesses."""
    from jaxbig import data
    path = str(tmp_path_factory.mktemp('tfds'))
    data.prepare(ml_collections.ConfigDict({'name': 'pystdlib', 'data_dir': path}))
    old = os.environ.get('TFDS_DATA_DIR')
    os.environ['TFDS_DATA_DIR'] = path
    yield path
    if old is None:
        os.environ.pop('TFDS_DATA_DIR', None)
    else:
        os.environ['TFDS_DATA_DIR'] = old


def run_cli(*args, devices: int = 1, timeout: int = 300, check: bool = True):
    """Runs `python -m jaxbig ARGS` with `devices` simulated CPU devices."""
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env.setdefault('JAX_PLATFORMS', 'cpu')
    proc = subprocess.run([sys.executable, '-m', 'jaxbig', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'jaxbig {" ".join(args)} failed ({proc.returncode}):\n'
                             f'{proc.stderr[-4000:]}')
    return proc


def start_processes(workdir, args, *, num_processes: int = 2, local_devices: int = 1):
    """Starts `python -m jaxbig ARGS --config.parallel.local_device_count=L` as N processes
    of one jax.distributed job on 127.0.0.1 (as launch/local.sh does, without a launcher to
    forward signals); process i logs to `workdir.<i>.log`. Returns the Popens, each with its
    open `.log` file: the caller waits, kills leftovers and closes the logs."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(num_processes):
        env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
        env.update(JAX_PLATFORMS='cpu', JAXBIG_COORDINATOR=f'127.0.0.1:{port}',
                   JAXBIG_NUM_PROCESSES=str(num_processes), JAXBIG_PROCESS_ID=str(i))
        log = open(f'{workdir}.{i}.log', 'w')  # noqa: SIM115 (the caller closes it)
        proc = subprocess.Popen(
            [sys.executable, '-m', 'jaxbig', *args,
             f'--config.parallel.local_device_count={local_devices}'],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log = log
        procs.append(proc)
    return procs


def process_logs(workdir, num_processes: int = 2) -> list[str]:
    """The texts of `start_processes`' logs."""
    out = []
    for i in range(num_processes):
        with open(f'{workdir}.{i}.log') as f:
            out.append(f.read())
    return out


def edit_safetensors(directory, edit):
    """Rewrites `directory`/model.safetensors after `edit(dict of numpy tensors)`."""
    from safetensors.numpy import load_file, save_file

    file = os.path.join(directory, 'model.safetensors')
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={'format': 'pt'})


def metric_series(workdir, key='train/loss') -> dict[int, float]:
    """{step: value} from workdir/metrics.jsonl (later rows for a step win)."""
    out = {}
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for line in f:
            row = json.loads(line)
            if key in row:
                out[row['step']] = row[key]
    return out
