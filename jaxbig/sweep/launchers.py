"""Launchers: the command that trains one run, `--dry-run`, and SLURM submission.

`train_command` builds a run's command for `--launcher local` (`python -m jaxbig train` in a
subprocess, see runner.py), `slurm` (`sbatch launch/slurm.sbatch ...`, one job per run) or
`tpu` (`bash launch/tpu_pod.sh run -- ...`, TPU_NAME / TPU_ZONE from the environment).
`dry_run` prints the command of every run not yet done. `submit` sbatches the pending runs
and records their job ids; `refresh_submitted` settles submitted runs on relaunch (done when
their metrics are complete, failed when their job left the queue without finishing).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from jaxbig.config import ConfigError
from jaxbig.sweep.state import State, finished, last_line

# <repo>/launch: this file is <repo>/jaxbig/sweep/launchers.py. The scripts are not part of
# the package: an installed (non-editable) jaxbig has no launch/ beside it.
LAUNCH_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'launch')
SCRIPTS = {'slurm': 'slurm.sbatch', 'tpu': 'tpu_pod.sh'}  # the launchers that need one


def launch_script(launcher: str) -> str:
    """The path of `launcher`'s script in LAUNCH_DIR (relative to the working directory);
    a one-line ConfigError when it is missing (jaxbig installed without the repository)."""
    path = os.path.join(LAUNCH_DIR, SCRIPTS[launcher])
    if not os.path.isfile(path):
        raise ConfigError(
            f'--launcher {launcher} needs launch/{SCRIPTS[launcher]}, which is not at {path}: '
            'the launch scripts (launch/local.sh, slurm.sbatch, tpu_pod.sh) come with a source '
            'checkout of the jaxbig repository (they are not packaged); run from a checkout '
            "(pip install -e .) or use --launcher local")
    return os.path.relpath(path)


def train_command(run: dict, run_dir: str, launcher: str, debug: bool = False) -> list[str]:
    """The command that trains `run` in `run_dir` through `launcher`."""
    args = run['args'] + ['--workdir', run_dir] + (['--debug'] if debug else [])
    if launcher == 'slurm':
        name = 'jaxbig-' + run['name'][:60]
        return ['sbatch', f'--job-name={name}', f'--output={os.path.join(run_dir, "slurm-%j.out")}',
                launch_script('slurm')] + args
    if launcher == 'tpu':
        return ['bash', launch_script('tpu'), 'run', '--'] + args
    return [sys.executable, '-m', 'jaxbig', 'train'] + args


def dry_run(state: State, runs: list[dict], workdir: str, launcher: str, debug: bool):
    """Prints the command of each run not done yet (an invalid run's error as a comment)."""
    for r in runs:
        if state.runs.get(r['name'], {}).get('status') == 'done':
            continue
        cmd = train_command(r, os.path.join(workdir, r['name']), launcher, debug)
        if launcher == 'local':
            cmd[0] = 'python'
        print(('# invalid: ' + r['error'] + '\n# ' if r['error'] else '') + shlex.join(cmd))


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
    """One `sbatch` per run; the run is then 'submitted' (with its job id) or 'failed'."""
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
