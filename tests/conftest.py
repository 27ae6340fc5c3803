"""Shared fixtures: one prepared copy of the embedded corpus per test session, and a helper
that runs the real CLI (in this process for one device; in a subprocess, so XLA_FLAGS can
set the device count, for more)."""
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
import xla_options

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

# Every test program compiles with the fast options (tests/xla_options.py). Subprocesses get
# the same through `xla_flags()`; tests that read compiled programs' memory or collectives
# (plan, sharding) set their own XLA_FLAGS and see the default pipeline.
FAST_COMPILE = xla_options.as_flags(xla_options.FAST)
os.environ['XLA_FLAGS'] = f"{FAST_COMPILE} {os.environ.get('XLA_FLAGS', '')}".strip()


# XLA:CPU's default pipeline, for a jit whose bits must be what a run (not the suite) gets.
DEFAULT_COMPILE = xla_options.DEFAULT


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS for a test subprocess: fast compiles and `devices` CPU devices."""
    return f'{FAST_COMPILE} --xla_force_host_platform_device_count={devices}'


@pytest.fixture(scope='session', autouse=True)
def _subprocesses_without_torch():
    """The `jaxbig` processes the tests start see no torch, as an install without the test
    extra would (torch is a test-only dependency): tensorboardX imports it when it can
    (~1.7 s of every process start here). Set in the processes that run tests only (an
    xdist controller spawns its workers with torch, which the HF comparisons need), by
    tests/without_torch/sitecustomize.py first on their path."""
    folder = os.path.join(REPO, 'tests', 'without_torch')
    old = os.environ.get('PYTHONPATH')
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(folder), old]))
    yield
    if old is None:
        os.environ.pop('PYTHONPATH', None)
    else:
        os.environ['PYTHONPATH'] = old


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


def shared_tmp(tmp_path_factory):
    """A temp folder shared by every pytest-xdist worker of this run (the run's own when
    there are no workers): what one worker prepares there, the others read."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
    """A TFDS data dir with `pystdlib` prepared, once for all workers; exported as
    TFDS_DATA_DIR for subprocesses."""
    from filelock import FileLock

    from jaxbig import data
    path = shared_tmp(tmp_path_factory) / 'tfds'
    with FileLock(f'{path}.lock'):
        if not (path / '.prepared').exists():
            path.mkdir(exist_ok=True)
            data.prepare(ml_collections.ConfigDict({'name': 'pystdlib', 'data_dir': str(path)}))
            (path / '.prepared').touch()
    path = str(path)
    old = os.environ.get('TFDS_DATA_DIR')
    os.environ['TFDS_DATA_DIR'] = path
    yield path
    if old is None:
        os.environ.pop('TFDS_DATA_DIR', None)
    else:
        os.environ['TFDS_DATA_DIR'] = old


# The SFT policy the post-training tests start from (tests/test_preference.py, test_grpo.py).
SFT_TINY = ['--config.model.num_layers=2', '--config.model.embed_dim=64',
            '--config.model.num_heads=4', '--config.model.mlp_dim=128',
            '--config.train.log_every=4', '--config.evals.gen.num_examples=4',
            '--config.evals.val.num_examples=32', '--config.optimizer.lr=1e-2']


@pytest.fixture(scope='session')
def name_task(tfds_dir):
    """The conditional task's 'name' examples (~10 s of parsing the library's files), built
    into tfds_dir once for all workers, so two workers never build them side by side."""
    from filelock import FileLock

    from jaxbig.data.builders import conditional_task
    with FileLock(f'{tfds_dir}.name_task.lock'):
        conditional_task.prepare_examples(ml_collections.ConfigDict(
            {'name': 'pystdlib', 'data_dir': tfds_dir, 'task': 'name'}))
    return tfds_dir


@pytest.fixture(scope='session')
def sft_run(name_task, tmp_path_factory):
    """A tiny experiments/sft.py run (8 steps), trained once for all workers."""
    from filelock import FileLock

    path = shared_tmp(tmp_path_factory) / 'sft_run'
    with FileLock(f'{path}.lock'):
        if not (path / '.trained').exists():
            run_cli('train', '--config', 'experiments/sft.py:steps=8,batch=16,seq=128',
                    '--workdir', str(path), '--force', *SFT_TINY)
            (path / '.trained').touch()
    return str(path)


def run_cli(*args, devices: int = 1, timeout: int = 300, check: bool = True,
            subprocess_: bool = False):
    """Runs `jaxbig ARGS` and returns a CompletedProcess (returncode, stdout, stderr).

    With one device (this process's own count) the CLI runs in this process through
    `cli.main`, so JAX is imported once and a model compiled by one test is reused by the
    next; `devices` > 1, or `subprocess_=True` where the process boundary is under test,
    runs `python -m jaxbig ARGS` with that many simulated CPU devices."""
    if devices == 1 and not subprocess_ and _one_local_device():
        proc = _run_in_process(list(args))
    else:
        env = dict(os.environ)
        env['XLA_FLAGS'] = xla_flags(devices)
        env.setdefault('JAX_PLATFORMS', 'cpu')
        proc = subprocess.run([sys.executable, '-m', 'jaxbig', *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'jaxbig {" ".join(args)} failed ({proc.returncode}):\n'
                             f'{proc.stderr[-4000:]}')
    return proc


def _one_local_device() -> bool:
    import jax

    return jax.local_device_count() == 1 and jax.default_backend() == 'cpu'


def _run_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """`cli.main(args)` with stdout, stderr and INFO logs captured as a subprocess's would
    be, from the repository root; an uncaught exception is exit status 1 with its
    traceback on stderr."""
    import contextlib
    import io
    import logging
    import traceback

    from jaxbig import cli

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S'))
    old_level, old_cwd = root.level, os.getcwd()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as e:  # argparse: --help, usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - a crash, as a process would report it
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        root.removeHandler(handler)
        root.setLevel(old_level)
    return subprocess.CompletedProcess(['jaxbig', *args], int(code or 0), out.getvalue(),
                                       err.getvalue())


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
        env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)  # devices: local_device_count
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
