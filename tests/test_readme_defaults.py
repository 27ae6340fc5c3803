"""README's experiment table is what `benchmarks/research.py --check-defaults` runs (#36): every
experiment has a row whose command is its default recipe and whose last cell quotes the
figure it reaches; the checker parses that cell, reads a finished run back the project's way
and holds the logged metric against the quoted figure within its noise. (Running the
commands themselves is the benchmark, not the suite: ~1 hour of this 2-core CPU.)"""
import json
import os
import shlex

import pytest
from test_research import REPO, research

readme_defaults = research.readme_defaults


@pytest.fixture(scope='module')
def rows():
    with open(os.path.join(REPO, 'README.md')) as f:
        return readme_defaults.parse_table(f.read())


def test_every_experiment_has_a_row_with_a_figure(rows):
    configs = {f'experiments/{name}' for name in os.listdir(os.path.join(REPO, 'experiments'))
               if name.endswith('.py')}
    assert {r.config for r in rows} == configs
    for row in rows:
        words = shlex.split(row.command)
        assert words[:3] in (['jaxbig', 'train', '--config'], ['jaxbig', 'plan', '--config'])
        assert words[3].split(':')[0] == row.config, row
        assert row.noise > 0 and row.metric


def test_rows_are_in_dependency_order_with_distinct_workdirs(rows):
    """A command that starts from another run (init= / teacher=) comes after the row that
    trains that run, so --check-defaults can run the table top to bottom."""
    seen = []
    for row in rows:
        spec = shlex.split(row.command)[3]
        for arg in spec.partition(':')[2].split(','):
            key, _, value = arg.partition('=')
            if key in ('init', 'teacher'):
                assert value in seen, f'{row.command}: {value} is trained by no earlier row'
        workdir = row.workdir('')
        if workdir:
            assert workdir not in seen
            seen.append(workdir)


@pytest.mark.parametrize('cell, match', [
    ('`val/loss` 2.1; 3 min', 'is not'),  # no noise
    ('2.1 ± 0.1; 3 min', 'is not'),  # no metric
])
def test_a_malformed_figure_names_its_row(cell, match):
    text = ('intro\n\n## Experiments\n\n| config | what | command | figure |\n|---|---|---|---|\n'
            f'| `experiments/lm.py` | x | `jaxbig train --config experiments/lm.py` | {cell} |\n')
    with pytest.raises(ValueError, match=f'experiments/lm.py.*{match}'):
        readme_defaults.parse_table(text)
    with pytest.raises(ValueError, match='no table rows'):
        readme_defaults.parse_table('x\n## Experiments\n\nnone\n\n## Next\n')


def _finished_run(root, name, metrics, steps=4):
    """A workdir as `jaxbig train` leaves it: config.json, metrics.jsonl up to train.steps."""
    from jaxbig import config as config_lib

    workdir = os.path.join(root, 'runs', name)
    os.makedirs(workdir)
    config = config_lib.load(os.path.join(REPO, 'experiments', 'lm.py'))
    config.train.steps = steps
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json())
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        f.write(json.dumps({'step': 2, 'val/accuracy': 0.1}) + '\n')
        f.write(json.dumps({'step': steps, **metrics}) + '\n')
    with open(workdir + '.timing.json', 'w') as f:
        json.dump([{'wall_s': 60.0, 'cpu_s': 100.0}, {'wall_s': 30.0, 'cpu_s': 20.0}], f)


def test_check_reads_finished_runs_back_and_compares(tmp_path, capsys):
    root = str(tmp_path / 'root')
    _finished_run(root, 'a', {'val/accuracy': 0.612})
    _finished_run(root, 'b', {'val/bits_per_byte': 2.2})
    rows = [readme_defaults.Row('experiments/lm.py', f'jaxbig train --config '
                                f'experiments/lm.py --workdir runs/{name}', metric, quoted, noise,
                                percent, '1 min')
            for name, metric, quoted, noise, percent in [
                ('a', 'val/accuracy', 60.0, 1.5, True),  # 61.2 % within 1.5 of 60
                ('b', 'val/bits_per_byte', 2.1, 0.05, False)]]  # 2.2 is not within 0.05
    out = str(tmp_path / 'records.json')
    assert readme_defaults.check(rows, root, out) == 1  # nothing was retrained
    records = {r['command'].split()[-1]: r for r in json.load(open(out))['rows']}
    assert records['runs/a']['measured'] == pytest.approx(61.2) and records['runs/a']['ok']
    assert records['runs/b']['measured'] == pytest.approx(2.2) and not records['runs/b']['ok']
    assert records['runs/a']['wall_s'] == 90.0 and records['runs/a']['cpu_s'] == 120.0
    printed = capsys.readouterr().out
    assert '61.200 % (README 60.0 % ± 1.5) ok' in printed and 'OUTSIDE THE NOISE' in printed
    assert os.path.islink(os.path.join(root, 'experiments'))  # commands run as written here
    assert readme_defaults.check(rows[:1], root, out) == 0
    assert len(json.load(open(out))['rows']) == 2  # the other row's record is kept


def test_a_metric_the_run_never_logged_fails_the_check(tmp_path):
    root = str(tmp_path)
    _finished_run(root, 'a', {'val/loss': 1.0})
    row = readme_defaults.Row('experiments/lm.py', 'jaxbig train --config experiments/lm.py '
                              '--workdir runs/a', 'val/f1', 50.0, 1.0, True, '1 min')
    record = readme_defaults.run_row(row, root)
    assert 'was not logged' in record['error']


def test_check_defaults_refuses_a_config_outside_the_table(capsys):
    assert research.main(['--check-defaults', 'nonesuch']) == 2
    assert "'nonesuch' is not in README's experiment table" in capsys.readouterr().err
