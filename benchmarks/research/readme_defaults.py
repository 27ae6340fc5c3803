"""README's experiment table, run as written and held against the figures it quotes (#36).

    rows = parse_table(readme_text)    every row of README's "## Experiments" table
    record = run_row(row, root)        runs its command verbatim in `root`; -> a record
    check(rows, root, results_path)    runs them in table order, stores and prints the records
    main(names, workdir_root, ...)     `research.py --check-defaults [CONFIG ...]`

A row's last cell quotes what the command reaches at the defaults, as

    `METRIC` VALUE [%] ± NOISE [%]; WALL

(`val/bits_per_byte` 2.103 ± 0.02; 6 min). METRIC is a key the run logs (its last value in
metrics.jsonl is read the project's way, jaxbig.writers.read_metrics), or `peak` for a
`jaxbig plan` row (the per-device peak it prints, in GB; run only where libtpu is installed).
A `%` figure is compared with 100 x the logged fraction. NOISE is the tolerance the check
allows (the row's seed-to-seed spread where it was measured, else what a same-seed rerun on
another CPU moves); the wall time is reported, never asserted.

The commands run in `root` with `root/experiments` linking to the repository's experiments,
so `--workdir runs/lm` is `root/runs/lm` and later rows find earlier ones' runs (the table is
in dependency order: lm before sft, sft before dpo). A finished workdir is read back, not
retrained; `--force` in research.py deletes root first.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time

from research import harness

REPO = harness.REPO
FIGURE = re.compile(r'`(?P<metric>[\w/.-]+)`\s+(?P<value>-?[\d.]+)\s*(?P<pct>%?)\s*±\s*'
                    r'(?P<noise>[\d.]+)\s*%?\s*;\s*(?P<wall>.+)$')
PEAK = re.compile(r'peak \(args \+ outputs - donated \+ temps\)\s+([\d.]+) GB')


@dataclasses.dataclass(frozen=True)
class Row:
    config: str  # experiments/<name>.py
    command: str  # the README command, verbatim
    metric: str
    quoted: float  # as README writes it (percent for a `%` figure)
    noise: float
    percent: bool
    wall: str  # README's wall time, as written

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.config))[0]

    def workdir(self, root: str) -> str | None:
        words = shlex.split(self.command)
        return os.path.join(root, words[words.index('--workdir') + 1]) \
            if '--workdir' in words else None


def parse_table(readme: str) -> list[Row]:
    """Rows of the first table under '## Experiments'; ValueError naming a malformed row."""
    section = readme.split('\n## Experiments\n', 1)
    if len(section) < 2:
        raise ValueError("README has no '## Experiments' section")
    rows = []
    for line in section[1].splitlines():
        if not line.startswith('|'):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if not cells[0].startswith('`experiments/'):
            continue  # the header and its rule
        if len(cells) != 4:
            raise ValueError(f'README experiments row {cells[0]}: {len(cells)} cells, expected 4 '
                             '(config | what | command | at the defaults)')
        figure = FIGURE.match(cells[3])
        if not figure:
            raise ValueError(f'README experiments row {cells[0]}: figure {cells[3]!r} is not '
                             '"`METRIC` VALUE [%] ± NOISE; WALL"')
        rows.append(Row(config=cells[0].strip('`'), command=cells[2].strip('`'),
                        metric=figure['metric'], quoted=float(figure['value']),
                        noise=float(figure['noise']), percent=bool(figure['pct']),
                        wall=figure['wall'].strip()))
    if not rows:
        raise ValueError("README's '## Experiments' section has no table rows")
    return rows


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] != 'jaxbig':
        raise ValueError(f'README command {command!r} does not start with `jaxbig`')
    return [sys.executable, '-m', 'jaxbig', *words[1:]]


def _tpu_plan(row: Row) -> bool:
    """Whether the row plans for a TPU target (compiled through libtpu)."""
    from jaxbig.planning import targets

    words = shlex.split(row.command)
    target = words[words.index('--target') + 1] if '--target' in words else 'cpu:8'
    return targets.parse(target).platform == 'tpu'


def _finished(workdir: str) -> bool:
    """A run that reached its train.steps (its last metrics row is at that step)."""
    from jaxbig import run as run_lib
    from jaxbig import writers

    if not os.path.exists(os.path.join(workdir, 'config.json')):
        return False
    rows = writers.read_metrics(workdir)
    return bool(rows) and rows[-1]['step'] >= int(run_lib.read_config(workdir).train.steps)


def run_row(row: Row, root: str, log=sys.stderr) -> dict:
    """Runs row.command in `root` (unless its workdir finished already) -> its record:
    the row, measured (in the row's units), ok, wall_s and cpu_s (every invocation's, kept in
    <workdir>.timing.json), or skipped (why)."""
    link = os.path.join(root, 'experiments')
    os.makedirs(root, exist_ok=True)
    if not os.path.lexists(link):
        os.symlink(os.path.join(REPO, 'experiments'), link)
    record = dict(dataclasses.asdict(row), date=str(datetime.date.today()))
    workdir = row.workdir(root)
    if workdir is None and _tpu_plan(row) and importlib.util.find_spec('libtpu') is None:
        return dict(record, skipped='a `jaxbig plan` for a TPU target needs libtpu '
                    "(pip install -e '.[tpu-plan]')")
    stem = workdir or os.path.join(root, row.name)
    if workdir is None or not _finished(workdir):
        print(f'[readme] {row.command}', file=log, flush=True)
        cpu0, t0 = harness.child_cpu_seconds(), time.monotonic()
        with open(stem + '.log', 'w') as out:
            proc = subprocess.run(_argv(row.command), cwd=root, stdout=out,
                                  stderr=subprocess.STDOUT)
        harness.add_timing(stem + '.timing.json', time.monotonic() - t0,
                           harness.child_cpu_seconds() - cpu0)
        if proc.returncode:
            return dict(record, error=f'exit {proc.returncode}; see '
                                      f'{harness.display(stem)}.log')
    with open(stem + '.timing.json') as f:
        timing = json.load(f)
    record.update(wall_s=round(sum(t['wall_s'] for t in timing), 1),
                  cpu_s=round(sum(t['cpu_s'] for t in timing), 1))
    measured = _measured(row, workdir, stem)
    if measured is None:
        return dict(record, error=f'{row.metric!r} was not logged; see '
                                     f'{harness.display(stem)}.log')
    return dict(record, measured=round(measured, 4),
                ok=abs(measured - row.quoted) <= row.noise + 1e-9)


def _measured(row: Row, workdir: str | None, stem: str) -> float | None:
    if workdir is None:  # a plan: the peak it printed
        with open(stem + '.log') as f:
            found = PEAK.findall(f.read())
        return float(found[-1]) if found else None
    from jaxbig import writers

    value = harness.final_metrics(writers.read_metrics(workdir)).get(row.metric)
    if value is None:
        return None
    return 100 * float(value) if row.percent else float(value)


def line(record: dict) -> str:
    """One report line: config, command -> measured vs quoted, wall."""
    unit = ' %' if record['percent'] else ''
    head = f"{record['config']:32s} {record['metric']}"
    if 'skipped' in record or 'error' in record:
        return f"{head}: {'SKIPPED' if 'skipped' in record else 'FAILED'} " \
               f"({record.get('skipped') or record['error']})"
    return (f"{head} {record['measured']:.3f}{unit} (README {record['quoted']}{unit} ± "
            f"{record['noise']}) {'ok' if record['ok'] else 'OUTSIDE THE NOISE'}; "
            f"{record['wall_s'] / 60:.1f} min wall, {record['cpu_s']:.0f} s CPU "
            f"(README: {record['wall']})")


def check(rows: list[Row], root: str, results_path: str, log=sys.stderr) -> int:
    """Runs `rows` in order, writes every record to results_path (JSON; earlier records of
    other rows kept), prints one line each; -> 0 when every row that ran is within its noise,
    1 otherwise."""
    stored = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            stored = {r['command']: r for r in json.load(f)['rows']}
    bad = 0
    for row in rows:
        record = run_row(row, root, log=log)
        stored[row.command] = record
        bad += 'error' in record or record.get('ok') is False
        print(line(record), flush=True)
        with open(results_path + '.tmp', 'w') as f:
            json.dump({'rows': list(stored.values())}, f, indent=1)
        os.replace(results_path + '.tmp', results_path)
    return 1 if bad else 0


def main(names, workdir_root: str, results_dir: str = '', force: bool = False) -> int:
    """`research.py --check-defaults NAMES`: the README rows of those configs (all when
    empty) under <workdir_root>/readme (--force: deleted first); records in
    <results_dir or benchmarks/research>/readme_defaults.json. -> check's status, or 2 for
    a name not in the table."""
    import shutil

    with open(os.path.join(REPO, 'README.md')) as f:
        rows = parse_table(f.read())
    unknown = sorted(set(names) - {r.name for r in rows})
    if unknown:
        print(f"research.py: {unknown[0]!r} is not in README's experiment table "
              f'(it has {[r.name for r in rows]})', file=sys.stderr)
        return 2
    root = os.path.join(workdir_root, 'readme')
    if force:
        shutil.rmtree(root, ignore_errors=True)
    results = os.path.join(results_dir or os.path.join(REPO, 'benchmarks', 'research'),
                           'readme_defaults.json')
    return check([r for r in rows if not names or r.name in names], root, results)
