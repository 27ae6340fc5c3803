"""Running research entries: resumable, each real `jaxbig train` timed and read back.

    Context(root, results_dir, quick)   where an entry's workdirs and its result JSON go
    ctx.train(name, spec, overrides)    runs `python -m jaxbig train --config SPEC --workdir
                                        <root>/<entry>/<name> OVERRIDES`; -> a run record
    run_entry(entry, fn, ctx, force)    fn(ctx) -> result dict, stored as
                                        <results_dir>/<entry>.json; skipped when it exists

A run record (JSON-ready dict): name, command (the `jaxbig train ...` line, workdir relative
to the repository), wall_s and cpu_s (wall time and the child's user + system seconds,
summed over every invocation that trained this workdir: `<workdir>.timing.json` keeps
them, so a run resumed after an interruption, or continued to more steps of the same
schedule, reports its whole cost), invocations (their number), resumed (the workdir already
held checkpoints), seed (train.seed of its config.json), final (the last logged value of
every metric) and curve (every metrics.jsonl row, timing columns dropped). The run is read back the
project's way: `jaxbig.run.read_config` and `jaxbig.writers.read_metrics`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMING_KEYS = ('train/steps_per_sec', 'train/tokens_per_sec', 'train/num_params')


def display(path: str) -> str:
    """A path as the command should show it: relative to the repository when inside it."""
    rel = os.path.relpath(os.path.abspath(path), REPO)
    return path if rel.startswith('..') else rel


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_timing(path: str, wall_s: float, cpu_s: float) -> list[dict]:
    """Appends one invocation's {wall_s, cpu_s} to the JSON list at `path`; -> the list."""
    timing = []
    if os.path.exists(path):
        with open(path) as f:
            timing = json.load(f)
    timing.append({'wall_s': round(wall_s, 1), 'cpu_s': round(cpu_s, 1)})
    with open(path, 'w') as f:
        json.dump(timing, f)
    return timing


def final_metrics(rows: list[dict]) -> dict[str, float]:
    """{metric: its value in the last row that has it} over metrics.jsonl rows."""
    out = {}
    for row in rows:
        out.update({k: v for k, v in row.items() if k != 'step'})
    return out


def curve(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@dataclasses.dataclass
class Context:
    root: str  # scratch directory of workdirs: <root>/<entry>/<run name>
    results_dir: str  # <entry>.json files (and the report's PNGs)
    quick: bool = False
    entry: str = ''
    log: object = sys.stderr

    def workdir(self, name: str) -> str:
        return os.path.join(self.root, self.entry, name)

    def train(self, name: str, spec: str, overrides=()) -> dict:
        """Runs one `jaxbig train` to completion (resuming its workdir) -> its run record."""
        from jaxbig import run as run_lib
        from jaxbig import writers

        workdir = self.workdir(name)
        resumed = os.path.isdir(os.path.join(workdir, 'checkpoints'))
        args = ['train', '--config', spec, '--workdir', workdir, *overrides]
        shown = ' '.join(['jaxbig', 'train', '--config', spec, '--workdir', display(workdir),
                          *overrides])
        print(f'[{self.entry}] {shown}', file=self.log, flush=True)
        os.makedirs(os.path.dirname(workdir), exist_ok=True)
        cpu0, t0 = child_cpu_seconds(), time.monotonic()
        with open(workdir + '.log', 'w') as log:
            proc = subprocess.run([sys.executable, '-m', 'jaxbig', *args], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT)
        timing = add_timing(workdir + '.timing.json', time.monotonic() - t0,
                            child_cpu_seconds() - cpu0)
        if proc.returncode:
            raise RuntimeError(f'{shown} failed (exit {proc.returncode}); see {workdir}.log')
        rows = writers.read_metrics(workdir)
        return dict(name=name, command=shown, wall_s=round(sum(t['wall_s'] for t in timing), 1),
                    cpu_s=round(sum(t['cpu_s'] for t in timing), 1), invocations=len(timing),
                    resumed=resumed, seed=int(run_lib.read_config(workdir).train.seed),
                    final=final_metrics(rows), curve=curve(rows))


def result_path(results_dir: str, entry: str) -> str:
    return os.path.join(results_dir, f'{entry}.json')


def load_results(results_dir: str) -> dict[str, dict]:
    """{entry: stored result} of every <entry>.json in results_dir (sorted by name)."""
    if not os.path.isdir(results_dir):
        return {}
    out = {}
    for name in sorted(os.listdir(results_dir)):
        if name.endswith('.json'):
            with open(os.path.join(results_dir, name)) as f:
                out[name[:-5]] = json.load(f)
    return out


def run_entry(entry: str, fn, ctx: Context, *, force: bool = False) -> tuple[dict, bool]:
    """Runs entry `fn(ctx)` unless its result JSON exists (-> (stored, False)); with `force`
    its JSON and workdirs are deleted first. -> (result, True) after a run, written
    atomically so an interrupted entry leaves no result (its workdirs resume)."""
    path = result_path(ctx.results_dir, entry)
    if force:
        shutil.rmtree(os.path.join(ctx.root, entry), ignore_errors=True)  # workdirs, logs, timing
        if os.path.exists(path):
            os.remove(path)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f), False
    ctx = dataclasses.replace(ctx, entry=entry)
    t0 = time.monotonic()
    result = fn(ctx)
    import jax

    result = dict(entry=entry, quick=ctx.quick, date=str(datetime.date.today()),
                  wall_s=round(time.monotonic() - t0, 1),
                  machine=f'{platform.machine()}, {os.cpu_count()} cores, Python '
                          f'{platform.python_version()}, jax {jax.__version__}',
                  **result)
    os.makedirs(ctx.results_dir, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(path + '.tmp', path)
    return result, True
