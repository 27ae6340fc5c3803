"""A sweep's record on disk: `<workdir>/sweep.json` and what a run directory tells.

`State` holds the sweep's command (config, sweep file, base overrides) and every run's
status (pending, running, done, failed + the error's last line, stopped, submitted), saved
atomically after each change. `finished` reads a run directory's metrics; `last_line` gives
the last line of its log (a failed run's error).
"""

from __future__ import annotations

import json
import os

STATE_FILE = 'sweep.json'
LOG_FILE = 'train.log'


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
    from jaxbig import writers  # imports jax: only when a run directory is read

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
