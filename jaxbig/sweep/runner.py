"""Running a sweep's runs: local subprocesses (`--parallel` at a time), resume, failures.

`merge_state` adds the planned runs to sweep.json and picks the ones to launch: done runs
are skipped, failed ones kept failed unless `--retry-failed`, and runs a killed sweep left
'running' are settled first (a surviving training is stopped, then the run is done or
stopped by its metrics). `Runner` trains each run in its own subprocess in
`<workdir>/<run name>/` (output appended to train.log there) and records its outcome: done,
stopped (by SIGTERM/SIGINT to the sweep: each training saves a checkpoint and the next launch
resumes it) or failed (the log's last line as the error). A training gets SIGTERM when the
sweep process dies (Linux PR_SET_PDEATHSIG). `lock` keeps two sweeps out of one workdir.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time

from jaxbig import config as config_lib
from jaxbig.sweep.launchers import refresh_submitted, train_command
from jaxbig.sweep.state import LOG_FILE, State, finished, last_line


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


def merge_state(state: State, runs: list[dict], spec: str, sweep_path: str,
                base: list[tuple[str, str]], workdir: str, retry_failed: bool) -> list[dict]:
    """Adds new runs to the state, settles runs a killed sweep left behind, returns the
    runs to launch now."""
    state.data.update(config=spec, sweep=sweep_path, overrides=[list(o) for o in base])
    for r in runs:
        entry = state.runs.setdefault(r['name'], {'status': 'pending', 'attempts': 0})
        entry['overrides'] = r['overrides']
    state.save()
    refresh_submitted(state, workdir)
    todo = []
    for r in runs:
        entry, run_dir = state.runs[r['name']], os.path.join(workdir, r['name'])
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
                status == 'failed' and not retry_failed):
            continue
        todo.append(r)
    return todo


@contextlib.contextmanager
def lock(workdir: str):
    """Holds `<workdir>/.sweep.lock`; a second sweep in the same workdir is refused."""
    import fcntl

    with open(os.path.join(workdir, '.sweep.lock'), 'w') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise config_lib.ConfigError(f'--workdir {workdir}: another sweep is running there') from None
        yield
