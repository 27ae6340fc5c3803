r"""Ablation sweeps: one sweep file -> many `jaxbig train` runs -> one results table + plots.

A sweep file defines `get_sweep()` returning a list of override dicts, built with the
helpers below (the big_vision / scenic habit):

    from jaxbig import sweep

    def get_sweep():
        return sweep.product(sweep.axis('optimizer.lr', [1e-3, 3e-3]),
                             sweep.axis('model.embed_dim', [64, 128]))

Keys are config keys (`optimizer.lr`) or, with a leading colon, config-file arguments
(`':mode'` turns `experiments/finetune_text.py:init=runs/lm` into `...:init=runs/lm,mode=...`).

    jaxbig sweep --config experiments/lm.py:size=tiny --sweep experiments/sweeps/lm_lr_width.py \
        --workdir runs/sweep1 [--parallel 2] [--config.train.steps=100]
    jaxbig sweep --workdir runs/sweep1 --report

Each run trains in its own subprocess (`python -m jaxbig train`) in `<workdir>/<run name>/`,
its output in `train.log` there. `<workdir>/sweep.json` records every run's status (pending,
running, done, failed + the error's last line, stopped, submitted); rerunning the command
skips done runs, resumes the others from their checkpoints and keeps failed ones failed
unless `--retry-failed`. SIGTERM/SIGINT stop the running trainings (each saves a
checkpoint); if the sweep process is killed outright, its trainings get SIGTERM (Linux) and
the next launch stops any survivor before resuming it. `--launcher slurm` submits one
`sbatch launch/slurm.sbatch` job per run (and returns); `--launcher tpu` runs each run in
turn through `launch/tpu_pod.sh run` (TPU_NAME / TPU_ZONE from the environment).
The report (results.csv, results.md, PNGs) is written at the end and by `--report`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from jaxbig import config as config_lib

STATE_FILE = 'sweep.json'
LOG_FILE = 'train.log'
ARG_PREFIX = ':'  # keys like ':mode' are config-file arguments, not config keys
MAX_NAME = 100
LAUNCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch')


# ---------------------------------------------------------------------- Sweep helpers

def axis(key: str, values) -> list[dict]:
    """One swept key: `axis('optimizer.lr', [1e-3, 3e-3])` -> [{'optimizer.lr': 1e-3}, ...]."""
    return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
    """Every combination of the axes (each a list of dicts); the last one varies fastest."""
    return [_merge(*combo) for combo in itertools.product(*axes)]


def zip_(*axes: list[dict]) -> list[dict]:
    """Axes of equal length stepped together: zip_(axis('a', [1, 2]), axis('b', [3, 4]))."""
    if len({len(a) for a in axes}) > 1:
        raise config_lib.ConfigError(f'sweep.zip_: axes of different lengths {[len(a) for a in axes]}')
    return [_merge(*combo) for combo in zip(*axes)]


def chain(*sweeps: list[dict]) -> list[dict]:
    """Concatenation: the runs of each sweep, one after the other."""
    return [dict(run) for s in sweeps for run in s]


def fixed(**overrides) -> list[dict]:
    """A single run's worth of overrides, for product(): fixed(**{'train.steps': 100})."""
    return [dict(overrides)]


def _merge(*dicts: dict) -> dict:
    out = {}
    for d in dicts:
        for k, v in d.items():
            if k in out and out[k] != v:
                raise config_lib.ConfigError(f'sweep: {k!r} is set twice ({out[k]!r}, {v!r})')
            out[k] = v
    return out


# ---------------------------------------------------------------------- Planning

def load_sweep(path: str) -> list[dict]:
    """Runs `path`'s get_sweep() and checks it returns a list of {str: value} dicts."""
    if not os.path.isfile(path):
        raise config_lib.ConfigError(f'--sweep {path!r}: no such file')
    spec = importlib.util.spec_from_file_location('_jaxbig_sweep', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_sweep'):
        raise config_lib.ConfigError(f'--sweep {path}: the file defines no get_sweep()')
    runs = module.get_sweep()
    if not isinstance(runs, (list, tuple)) or not runs:
        raise config_lib.ConfigError(f'--sweep {path}: get_sweep() must return a non-empty list')
    seen = {}
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not all(isinstance(k, str) and k for k in run):
            raise config_lib.ConfigError(f'--sweep {path}: run {i} is not a dict of str keys')
        key = _canonical(run)
        if key in seen:
            raise config_lib.ConfigError(f'--sweep {path}: run {i} repeats run {seen[key]}')
        seen[key] = i
    return [json.loads(_canonical(r, sort=False)) for r in runs]


def _canonical(run: dict, sort: bool = True) -> str:
    return json.dumps(run, sort_keys=sort, default=repr)


def arg_value(value) -> str:
    """A Python value as the string `--config.k=` (or a config-file argument) expects."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return value
    return repr(value)


def run_names(runs: list[dict]) -> list[str]:
    """Readable, filesystem-safe, unique names: 'lr=0.001,embed_dim=64'. A key is shortened
    to its last dotted parts that are unique among the sweep's keys."""
    keys = list(dict.fromkeys(k for run in runs for k in run))
    short = {}
    for key in keys:
        parts = key.lstrip(ARG_PREFIX).split('.')
        for n in range(1, len(parts) + 1):
            cand = '.'.join(parts[-n:])
            if all(o == key or not ('.' + o.lstrip(ARG_PREFIX)).endswith('.' + cand) for o in keys):
                break
        short[key] = cand
    names, used = [], set()
    for run in runs:
        name = ','.join(f'{short[k]}={arg_value(v)}' for k, v in run.items()) or 'base'
        name = re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)
        if len(name) > MAX_NAME:
            name = name[: MAX_NAME - 9] + '~' + hashlib.sha1(_canonical(run).encode()).hexdigest()[:8]
        base, i = name, 1
        while name in used:
            i += 1
            name = f'{base}~{i}'
        used.add(name)
        names.append(name)
    return names


def run_spec(spec: str, run: dict) -> str:
    """The --config spec of a run: its ':key' entries merged into the config-file argument."""
    args = {k[len(ARG_PREFIX):]: arg_value(v) for k, v in run.items() if k.startswith(ARG_PREFIX)}
    if not args:
        return spec
    path, _, arg = spec.partition(':')
    items = {}
    for item in filter(None, arg.split(',')):
        key, sep, value = item.partition('=')
        items[key.strip()] = value if sep else 'true'
    for key, value in args.items():
        if ',' in value:
            raise config_lib.ConfigError(f'sweep: config argument {key}={value!r} contains a comma')
        items[key] = value
    return path + ':' + ','.join(f'{k}={v}' for k, v in items.items())


def plan(spec: str, sweep_path: str, base: list[tuple[str, str]], names: dict | None = None):
    """The sweep's runs: [{'name', 'overrides', 'spec', 'args', 'error'}], each checked by
    loading its config (a bad override fills 'error' instead of raising). `names` maps a
    run's canonical overrides to the name a previous launch gave it."""
    config_lib.apply_overrides(config_lib.load(spec), base)  # a bad base fails the sweep
    runs = load_sweep(sweep_path)
    fresh = run_names(runs)
    out = []
    for run, name in zip(runs, fresh):
        name = (names or {}).get(_canonical(run), name)
        overrides = [(k, arg_value(v)) for k, v in run.items() if not k.startswith(ARG_PREFIX)]
        error = ''
        try:
            r_spec = run_spec(spec, run)
            config_lib.apply_overrides(config_lib.load(r_spec), base + overrides)
        except config_lib.ConfigError as e:
            r_spec, error = spec, str(e)
        args = ['--config', r_spec] + [f'--config.{k}={v}' for k, v in base + overrides]
        out.append({'name': name, 'overrides': run, 'spec': r_spec, 'args': args,
                    'error': error})
    return out


# ---------------------------------------------------------------------- State

class State:
    """`<workdir>/sweep.json`: the sweep's command and every run's status, saved atomically."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, STATE_FILE)
        self.data = {'config': None, 'sweep': None, 'overrides': [], 'runs': {}}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.data = json.load(f)

    @property
    def runs(self) -> dict:
        return self.data['runs']

    def save(self):
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)

    def update(self, name: str, **fields):
        self.runs[name].update(fields)
        self.save()

    def counts(self) -> dict:
        out = {}
        for r in self.runs.values():
            out[r['status']] = out.get(r['status'], 0) + 1
        return out


def finished(run_dir: str) -> bool:
    """True when the run's metrics reached its config's train.steps."""
    path = os.path.join(run_dir, 'config.json')
    if not os.path.exists(path):
        return False
    from jaxbig import writers

    with open(path) as f:
        steps = json.load(f)['train']['steps']
    rows = writers.read_metrics(run_dir)
    return bool(rows) and rows[-1]['step'] >= steps


def last_line(path: str) -> str:
    """The last non-empty line of a log (progress-bar carriage returns removed)."""
    if not os.path.exists(path):
        return ''
    with open(path, 'rb') as f:
        f.seek(max(os.path.getsize(path) - 20000, 0))
        text = f.read().decode('utf-8', 'replace')
    lines = [ln.split('\r')[-1].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    line = lines[-1] if lines else ''
    return line.removeprefix('jaxbig: error: ')


# ---------------------------------------------------------------------- Launching

def train_command(run: dict, run_dir: str, launcher: str, debug: bool = False) -> list[str]:
    """The command that trains `run` in `run_dir` through `launcher`."""
    args = run['args'] + ['--workdir', run_dir] + (['--debug'] if debug else [])
    if launcher == 'slurm':
        name = 'jaxbig-' + run['name'][:60]
        return ['sbatch', f'--job-name={name}', f'--output={os.path.join(run_dir, "slurm-%j.out")}',
                os.path.relpath(os.path.join(LAUNCH_DIR, 'slurm.sbatch'))] + args
    if launcher == 'tpu':
        return ['bash', os.path.relpath(os.path.join(LAUNCH_DIR, 'tpu_pod.sh')), 'run', '--'] + args
    return [sys.executable, '-m', 'jaxbig', 'train'] + args


def _die_with_parent():
    """In the child: get SIGTERM (save a checkpoint, exit) if the sweep process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int | None, run_dir: str) -> bool:
    """Whether `pid` is still a training of `run_dir` (left over from a killed sweep)."""
    if not pid:
        return False
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return os.path.basename(run_dir).encode() in f.read()
    except OSError:
        return False


def _stop_survivor(pid: int, run_dir: str, timeout: float = 600):
    print(f'sweep: stopping a training left over by a killed sweep (pid {pid}, {run_dir})',
          file=sys.stderr, flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while _alive(pid, run_dir) and time.time() < deadline:
        time.sleep(0.2)
    if _alive(pid, run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Runner:
    """Runs the pending runs as subprocesses, `parallel` at a time, recording each outcome."""

    def __init__(self, state: State, workdir: str, launcher: str, parallel: int, debug: bool):
        self.state, self.workdir, self.launcher = state, workdir, launcher
        self.parallel, self.debug = max(parallel, 1), debug
        self.running = {}  # name -> (Popen, start time, log file)
        self.stopping = False

    def progress(self, note: str = ''):
        c, total = self.state.counts(), len(self.state.runs)
        line = (f'sweep: {c.pop("done", 0)}/{total} done, {c.pop("running", 0)} running, '
                f'{c.pop("failed", 0)} failed')
        line += ''.join(f', {n} {status}' for status, n in sorted(c.items()))
        print(line + (f'  [{note}]' if note else ''), file=sys.stderr, flush=True)

    def _signal(self, signum, frame):
        if not self.stopping:
            print(f'sweep: signal {signum}: stopping {len(self.running)} training(s); rerun the '
                  'same command to resume', file=sys.stderr, flush=True)
        self.stopping = True
        for proc, _, _ in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def run(self, todo: list[dict]):
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            todo = list(todo)
            while (todo and not self.stopping) or self.running:
                while todo and len(self.running) < self.parallel and not self.stopping:
                    self._start(todo.pop(0))
                for name in [n for n, (p, _, _) in self.running.items() if p.poll() is not None]:
                    self._finish(name)
                time.sleep(0.1)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _start(self, run: dict):
        name, entry = run['name'], self.state.runs[run['name']]
        if run['error']:
            self.state.update(name, status='failed', error=run['error'])
            self.progress(f'failed {name}: {run["error"]}')
            return
        run_dir = os.path.join(self.workdir, name)
        os.makedirs(run_dir, exist_ok=True)
        cmd = train_command(run, run_dir, self.launcher, self.debug)
        log = open(os.path.join(run_dir, LOG_FILE), 'a')  # noqa: SIM115 (closed in _finish)
        attempt = entry.get('attempts', 0) + 1
        log.write(f'=== jaxbig sweep: attempt {attempt} at {time.strftime("%Y-%m-%d %H:%M:%S")}: '
                  f'{shlex.join(cmd)}\n')
        log.flush()
        proc = subprocess.Popen(  # the sweep process runs no threads: preexec_fn is safe
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.running[name] = (proc, time.time(), log)
        self.state.update(name, status='running', pid=proc.pid, attempts=attempt, error='',
                          started=time.time())
        self.progress(f'started {name}')

    def _finish(self, name: str):
        proc, start, log = self.running.pop(name)
        log.close()
        run_dir = os.path.join(self.workdir, name)
        wall = self.state.runs[name].get('wall_s', 0.0) + time.time() - start
        rc = proc.returncode
        if rc == 0 and (not self.stopping or finished(run_dir)):
            status, error = 'done', ''
        elif rc == 0 or (self.stopping and rc in (-signal.SIGTERM, -signal.SIGINT)):
            status, error = 'stopped', ''
        else:
            status = 'failed'
            error = last_line(os.path.join(run_dir, LOG_FILE))
            if rc < 0:
                error = f'killed by {signal.Signals(-rc).name}; last line: {error}'
        self.state.update(name, status=status, error=error, returncode=rc, pid=None,
                          wall_s=round(wall, 3))
        self.progress(f'{status} {name}' + (f': {error}' if error else ''))


# ---------------------------------------------------------------------- SLURM

def _queued_jobs() -> set[str] | None:
    try:
        out = subprocess.run(['squeue', '-h', '-o', '%i', '-u', os.environ.get('USER', '')],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {line.strip().split('_')[0] for line in out.splitlines() if line.strip()}


def refresh_submitted(state: State, workdir: str):
    """SLURM runs: done when their metrics are complete; failed when their job left the
    queue without finishing (the error: the job output's last line)."""
    queued = None
    for name, entry in state.runs.items():
        if entry['status'] != 'submitted':
            continue
        run_dir = os.path.join(workdir, name)
        if finished(run_dir):
            state.update(name, status='done', error='')
            continue
        queued = _queued_jobs() if queued is None else queued
        if queued is not None and str(entry.get('job_id')) not in queued:
            out = os.path.join(run_dir, f'slurm-{entry.get("job_id")}.out')
            state.update(name, status='failed', error=last_line(out) or 'job left the queue')


def submit(state: State, todo: list[dict], workdir: str, debug: bool):
    for run in todo:
        name = run['name']
        if run['error']:
            state.update(name, status='failed', error=run['error'])
            continue
        run_dir = os.path.join(workdir, name)
        os.makedirs(run_dir, exist_ok=True)
        proc = subprocess.run(train_command(run, run_dir, 'slurm', debug), check=False,
                              capture_output=True, text=True)
        if proc.returncode:
            state.update(name, status='failed', error=last_line_of(proc.stderr or proc.stdout))
            continue
        job = re.findall(r'\d+', proc.stdout)
        state.update(name, status='submitted', job_id=job[-1] if job else '',
                     attempts=state.runs[name].get('attempts', 0) + 1, error='')
        print(f'sweep: submitted {name} (job {job[-1] if job else "?"})', file=sys.stderr)


def last_line_of(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ''


# ---------------------------------------------------------------------- Command line

def add_parser(subparsers):
    """Adds `jaxbig sweep` to the CLI's subparsers."""
    p = subparsers.add_parser('sweep', help='run an ablation sweep; write its results table',
                              description=__doc__.split('\n\n')[0])
    p.add_argument('--config', help='experiments/file.py[:arg] (default: the one in sweep.json)')
    p.add_argument('--sweep', help='experiments/sweeps/file.py (default: the one in sweep.json)')
    p.add_argument('--workdir', required=True, help='one subdirectory per run; sweep.json; results')
    p.add_argument('--parallel', type=int, default=1, help='runs at a time (local launcher)')
    p.add_argument('--launcher', choices=['local', 'slurm', 'tpu'], default='local')
    p.add_argument('--dry-run', action='store_true', help='print each pending run\'s command')
    p.add_argument('--report', action='store_true', help='only write the report, run nothing')
    p.add_argument('--retry-failed', action='store_true', help='also rerun failed runs')
    p.add_argument('--debug', action='store_true', help='show full tracebacks (runs too)')
    p.set_defaults(run=run)
    return p


def run(args, extra):
    """`jaxbig sweep`: plan, (re)launch, report. Exits 1 if a run failed."""
    from jaxbig import cli, sweep_report

    state = State(args.workdir)
    if args.report:
        if not state.data['config']:
            raise config_lib.ConfigError(f'--workdir {args.workdir}: no {STATE_FILE} there')
        for path in sweep_report.write_report(args.workdir, state.data):
            print(path)
        return
    base = cli._split_overrides(extra)
    if not base and not args.config:  # a relaunch by workdir alone: the stored overrides
        base = [tuple(o) for o in state.data['overrides']]
    spec = args.config or state.data['config']
    sweep_path = args.sweep or state.data['sweep']
    if not spec or not sweep_path:
        raise config_lib.ConfigError('jaxbig sweep needs --config and --sweep (or a workdir '
                                     f'holding a {STATE_FILE})')
    if state.data['config'] and (spec, [list(o) for o in base]) != (
            state.data['config'], state.data['overrides']):
        raise config_lib.ConfigError(
            f'--workdir {args.workdir} holds a sweep of --config {state.data["config"]} with '
            f'overrides {state.data["overrides"]}; use the same ones or another workdir')
    names = {_canonical(r['overrides']): n for n, r in state.runs.items()}
    runs = plan(spec, sweep_path, base, names)
    if args.dry_run:
        for r in runs:
            if state.runs.get(r['name'], {}).get('status') == 'done':
                continue
            cmd = train_command(r, os.path.join(args.workdir, r['name']), args.launcher, args.debug)
            if args.launcher == 'local':
                cmd[0] = 'python'
            print(('# invalid: ' + r['error'] + '\n# ' if r['error'] else '') + shlex.join(cmd))
        return
    os.makedirs(args.workdir, exist_ok=True)
    with _lock(args.workdir):
        todo = _merge_state(state, runs, spec, sweep_path, base, args)
        if args.launcher == 'slurm':
            submit(state, todo, args.workdir, args.debug)
        else:
            parallel = args.parallel
            if args.launcher == 'tpu' and parallel > 1:
                print('sweep: --launcher tpu runs one run at a time', file=sys.stderr)
                parallel = 1
            runner = Runner(state, args.workdir, args.launcher, parallel, args.debug)
            runner.progress(f'{len(todo)} to run')
            runner.run(todo)
    for path in sweep_report.write_report(args.workdir, state.data):
        print(path)
    failed = [n for n, r in state.runs.items() if r['status'] == 'failed']
    if failed:
        print(f'sweep: {len(failed)} run(s) failed: {", ".join(failed)}', file=sys.stderr)
        raise SystemExit(1)


def _merge_state(state, runs, spec, sweep_path, base, args) -> list[dict]:
    """Adds new runs to the state, settles runs a killed sweep left behind, returns the
    runs to launch now."""
    state.data.update(config=spec, sweep=sweep_path, overrides=[list(o) for o in base])
    for r in runs:
        entry = state.runs.setdefault(r['name'], {'status': 'pending', 'attempts': 0})
        entry['overrides'] = r['overrides']
    state.save()
    refresh_submitted(state, args.workdir)
    todo = []
    for r in runs:
        entry, run_dir = state.runs[r['name']], os.path.join(args.workdir, r['name'])
        if entry['status'] == 'running':  # its sweep was killed
            if _alive(entry.get('pid'), run_dir):
                _stop_survivor(entry['pid'], run_dir)
            status = 'done' if finished(run_dir) else 'stopped'
            metrics = os.path.join(run_dir, 'metrics.jsonl')
            wall = entry.get('wall_s', 0.0) + (max(os.path.getmtime(metrics) - entry['started'], 0)
                                               if os.path.exists(metrics) and 'started' in entry else 0)
            state.update(r['name'], status=status, pid=None, wall_s=round(wall, 3))
        status = entry['status']
        if status == 'done' or status == 'submitted' or (
                status == 'failed' and not args.retry_failed):
            continue
        todo.append(r)
    return todo


@contextlib.contextmanager
def _lock(workdir: str):
    import fcntl

    with open(os.path.join(workdir, '.sweep.lock'), 'w') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise config_lib.ConfigError(f'--workdir {workdir}: another sweep is running there') from None
        yield


def main(argv: list[str] | None = None) -> int:
    """`python -m jaxbig.sweep ARGS` = `jaxbig sweep ARGS` (errors as one line, status 2)."""
    parser = argparse.ArgumentParser(prog='jaxbig')
    add_parser(parser.add_subparsers(dest='command', required=True))
    args, extra = parser.parse_known_args(['sweep', *(sys.argv[1:] if argv is None else argv)])
    try:
        args.run(args, extra)
    except (config_lib.ConfigError, ValueError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f'jaxbig: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
