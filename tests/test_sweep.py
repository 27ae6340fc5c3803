"""Ablation sweeps: helpers and names (instant); every sweep in experiments/sweeps/ plans;
a 4-run sweep killed while a run is mid-way and relaunched (finished runs not redone, the
interrupted run resumed from its checkpoint; table == each run's metrics.jsonl, PNGs); a bad
override marked failed while the others complete; launcher dry-runs."""
import ast
import csv
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_LM, xla_flags
from jaxbig import cli
from jaxbig import config as config_lib
from jaxbig import sweep, writers

LM = os.path.join(REPO, 'experiments', 'lm.py')
BASE = [*TINY_LM, '--config.evals.val.num_examples=16', '--config.train.checkpoint_every=10']
STEPS = 20  # long enough to catch a run mid-way
SWEEP_4 = '''
from jaxbig import sweep

def get_sweep():
    return sweep.product(sweep.axis('optimizer.lr', [1e-3, 3e-3]),
                         sweep.axis('model.embed_dim', [32, 64]))
'''
NAMES = ['lr=0.001,embed_dim=32', 'lr=0.001,embed_dim=64', 'lr=0.003,embed_dim=32',
         'lr=0.003,embed_dim=64']


def _env():
    return dict(os.environ, JAX_PLATFORMS='cpu',
                XLA_FLAGS=xla_flags(1))


def _sweep_cmd(sweep_file, workdir, *extra, steps=STEPS):
    return [sys.executable, '-m', 'jaxbig', 'sweep', '--config', f'{LM}:size=tiny,steps={steps}',
            '--sweep', str(sweep_file), '--workdir', str(workdir), *extra, *BASE]


def _state(workdir):
    path = os.path.join(workdir, sweep.STATE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)['runs']


# ------------------------------------------------------------------ helpers, names

def test_helpers_compose():
    lr = sweep.axis('optimizer.lr', [1e-3, 3e-3])
    width = sweep.zip_(sweep.axis('model.embed_dim', [64, 128]),
                       sweep.axis('model.mlp_dim', [192, 384]))
    runs = sweep.chain(sweep.product(lr, width), sweep.fixed(**{'optimizer.lr': 1e-2}))
    assert runs[:2] == [{'optimizer.lr': 1e-3, 'model.embed_dim': 64, 'model.mlp_dim': 192},
                        {'optimizer.lr': 1e-3, 'model.embed_dim': 128, 'model.mlp_dim': 384}]
    assert len(runs) == 5 and runs[-1] == {'optimizer.lr': 1e-2}
    with pytest.raises(ValueError, match='different lengths'):
        sweep.zip_(lr, sweep.axis('x', [1]))


def test_run_names_are_short_unique_and_safe():
    runs = [{'model.image.width': 32, 'model.text.width': 8, ':loss': 'clip'},
            {'model.image.width': 32, 'model.text.width': 8, ':loss': 'a/b c'},
            {'optimizer.freeze': ['encoder/.*'], 'train.seed': True}]
    names = sweep.run_names(runs)
    assert names[0] == 'image.width=32,text.width=8,loss=clip'
    assert names[1] == 'image.width=32,text.width=8,loss=a_b_c'
    assert names[2] == "freeze=__encoder_.___,seed=true"
    assert all('/' not in n for n in names)
    assert sweep.run_spec('x.py:init=runs/lm,mode=full', {':mode': 'linear_probe'}) == (
        'x.py:init=runs/lm,mode=linear_probe')
    assert sweep.run_spec('x.py', {':loss': 'siglip', 'a.b': 1}) == 'x.py:loss=siglip'


# ------------------------------------------------------------------ the real sweeps

def documented_config(sweep_file: str) -> str:
    """The --config of the `jaxbig sweep` command in a sweep file's docstring."""
    return documented_command(sweep_file)[0]


def documented_command(sweep_file: str) -> tuple[str, list[str]]:
    """(--config, the `--config.key=value` overrides) of the `jaxbig sweep` command in a
    sweep file's docstring (its lines joined, shell-quoted as a user types it)."""
    import shlex

    with open(sweep_file) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    match = re.search(r'jaxbig sweep --config (\S+)((?:.*\\\n)*.*)', doc)
    assert match, f'{sweep_file}: its docstring shows no `jaxbig sweep --config ...` command'
    words = shlex.split(match[2].replace('\\\n', ' '))
    return match[1], [w for w in words if w.startswith('--config.')]


SWEEP_FILES = sorted(glob.glob(os.path.join(REPO, 'experiments', 'sweeps', '*.py')))


@pytest.mark.parametrize('sweep_file', SWEEP_FILES, ids=os.path.basename)
def test_every_sweep_file_plans(sweep_file, tmp_path, capsys):
    """Its documented command, as a dry run: one valid `jaxbig train` per run. A pretrained
    `init=` workdir is stood in for by one holding the LM's config.json (all that planning
    reads)."""
    spec = documented_config(sweep_file)
    lm = tmp_path / 'lm'
    lm.mkdir()
    (lm / 'config.json').write_text(config_lib.to_json(config_lib.load(
        os.path.join(REPO, 'experiments', 'lm.py'))))
    spec = os.path.join(REPO, re.sub(r'\binit=[^,]+', f'init={lm}', spec))
    runs = sweep.load_sweep(sweep_file)
    workdir = tmp_path / 'sweep'
    capsys.readouterr()
    overrides = documented_command(sweep_file)[1]
    assert cli.main(['sweep', '--config', spec, '--sweep', sweep_file, '--workdir', str(workdir),
                       '--dry-run', *overrides]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    assert not [ln for ln in lines if ln.startswith('# invalid')], lines
    assert len(lines) == len(runs) >= 2
    assert all(' -m jaxbig train --config ' in ln for ln in lines)
    assert len({ln.split('--workdir ')[-1] for ln in lines}) == len(runs)  # distinct run dirs
    assert not workdir.exists()


# ------------------------------------------------------------------ killed, relaunched

def _mid_run(workdir, state):
    """A run that is training (logged a step, at least 5 steps from the end), or None."""
    for name, entry in state.items():
        if entry['status'] != 'running':
            continue
        rows = writers.read_metrics(str(workdir / name))
        if rows and rows[-1]['step'] <= STEPS - 5:
            return name
    return None


@pytest.fixture(scope='module')
def resumed(tmp_path_factory, tfds_dir):
    """A 4-run sweep (2 at a time) SIGKILLed once a run is done and another is mid-way
    (its training gets SIGTERM, saves a checkpoint and exits), then relaunched."""
    tmp = tmp_path_factory.mktemp('sweep')
    sweep_file, workdir = tmp / 'lr_width.py', tmp / 'sweep'
    sweep_file.write_text(SWEEP_4)
    proc = subprocess.Popen(_sweep_cmd(sweep_file, workdir, '--parallel', '2'), cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline, interrupted = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        state = _state(workdir)
        if any(r['status'] == 'done' for r in state.values()):
            interrupted = _mid_run(workdir, state)
            if interrupted:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    state = _state(workdir)
    assert interrupted, state
    before = {n: r for n, r in state.items() if r['status'] == 'done'}
    assert 1 <= len(before) < 4, state
    # The killed sweep's trainings stop by themselves (SIGTERM from the kernel when their
    # parent died); wait for them so that the row counts below are final.
    for name, r in state.items():
        while r['status'] == 'running' and sweep.runner._alive(r.get('pid'), str(workdir / name)):
            assert time.time() < deadline + 120, f'{name} did not stop'
            time.sleep(0.1)
    mtimes = {n: os.path.getmtime(workdir / n / 'metrics.jsonl') for n in before}
    rows_before = {n: len((workdir / n / 'metrics.jsonl').read_text().splitlines())
                   for n in NAMES if (workdir / n / 'metrics.jsonl').exists()}
    again = subprocess.run(_sweep_cmd(sweep_file, workdir, '--parallel', '2'), cwd=REPO,
                           env=_env(), check=False, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    return {'workdir': workdir, 'before': before, 'mtimes': mtimes, 'stderr': again.stderr,
            'interrupted': interrupted, 'rows_before': rows_before}


@pytest.mark.slow  # the `resumed` fixture: a 4-run sweep, killed and relaunched, ~65-80 s
def test_relaunch_finishes_without_redoing(resumed):
    workdir, state = resumed['workdir'], _state(resumed['workdir'])
    assert sorted(state) == NAMES and {r['status'] for r in state.values()} == {'done'}
    for name in resumed['before']:  # finished before the kill: untouched
        assert state[name]['attempts'] == 1
        assert os.path.getmtime(workdir / name / 'metrics.jsonl') == resumed['mtimes'][name]
        log = (workdir / name / sweep.LOG_FILE).read_text()
        assert log.count('=== jaxbig sweep: attempt') == 1
    for name in set(NAMES) - set(resumed['before']):
        assert state[name]['attempts'] >= 1
        assert writers.read_metrics(str(workdir / name))[-1]['step'] == STEPS
    assert '4/4 done, 0 running, 0 failed' in resumed['stderr']


@pytest.mark.slow  # the `resumed` fixture: a 4-run sweep, killed and relaunched, ~65-80 s
def test_interrupted_run_resumes_from_its_checkpoint(resumed):
    """The run that was mid-way: its second attempt restores the checkpoint its first one
    saved when stopped and trains only the remaining steps."""
    workdir, name = resumed['workdir'], resumed['interrupted']
    assert _state(workdir)[name]['attempts'] == 2
    log = (workdir / name / sweep.LOG_FILE).read_text()
    first, second = log.split('=== jaxbig sweep: attempt')[1:]
    assert 'saving a checkpoint and stopping' in first
    match = re.search(r'resumed from \S+/checkpoints/(\d+)', second)
    assert match, second[-3000:]
    resumed_at = int(match[1])
    assert 0 < resumed_at < STEPS
    rows = [json.loads(ln) for ln in (workdir / name / 'metrics.jsonl').read_text().splitlines()]
    split = resumed['rows_before'][name]
    first_rows, second_rows = rows[:split], rows[split:]
    assert first_rows[-1]['step'] == resumed_at  # stopped there, checkpoint of that step
    assert [r['step'] for r in second_rows] == list(range(resumed_at + 1, STEPS + 1))
    assert len(second_rows) < STEPS


@pytest.mark.slow  # the `resumed` fixture: a 4-run sweep, killed and relaunched, ~65-80 s
def test_table_matches_each_runs_metrics(resumed):
    workdir = resumed['workdir']
    with open(workdir / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['run'] for r in rows] == NAMES
    for row in rows:
        metrics = writers.read_metrics(str(workdir / row['run']))
        last = metrics[-1]
        assert row['status'] == 'done' and int(row['steps']) == last['step'] == STEPS
        assert float(row['train/loss']) == last['train/loss']
        assert float(row['val/loss']) == last['val/loss']
        assert float(row['best val/loss']) == min(m['val/loss'] for m in metrics if 'val/loss' in m)
        assert float(row['best val/token_accuracy']) == max(
            m['val/token_accuracy'] for m in metrics if 'val/token_accuracy' in m)
        assert int(row['num_params']) == last['train/num_params']
        lr, dim = row['run'].replace('lr=', '').replace('embed_dim=', '').split(',')
        assert float(row['optimizer.lr']) == float(lr) and int(row['model.embed_dim']) == int(dim)
        assert float(row['wall_s']) > 0
    params = {r['model.embed_dim']: int(r['num_params']) for r in rows}
    assert params['32'] < params['64']
    md = (workdir / 'results.md').read_text()
    assert md.count('\n| lr=') == 4 and '![loss_curves.png](loss_curves.png)' in md


@pytest.mark.slow  # the `resumed` fixture: a 4-run sweep, killed and relaunched, ~65-80 s
def test_plots_are_images(resumed):
    import matplotlib.image

    workdir = resumed['workdir']
    for name in ('loss_curves.png', 'final_vs_optimizer.lr.png', 'final_vs_model.embed_dim.png'):
        path = workdir / name
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        image = matplotlib.image.imread(str(path))
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


@pytest.mark.slow  # the `resumed` fixture: a 4-run sweep, killed and relaunched, ~65-80 s
def test_report_and_dry_runs_on_a_finished_sweep(resumed, capsys):
    workdir = str(resumed['workdir'])
    os.remove(os.path.join(workdir, 'results.csv'))
    assert cli.main(['sweep', '--workdir', workdir, '--report']) == 0
    assert os.path.exists(os.path.join(workdir, 'results.csv'))
    capsys.readouterr()
    # Done runs are not relaunched: nothing left to print.
    assert cli.main(['sweep', '--workdir', workdir, '--dry-run', *BASE]) == 0
    assert cli.main(['sweep', '--workdir', workdir, '--dry-run']) == 0  # config etc. from sweep.json
    assert capsys.readouterr().out == ''
    # A different base config in the same workdir is refused.
    assert cli.main(['sweep', '--workdir', workdir, '--dry-run', '--config.train.seed=1', *BASE]) == 2
    assert 'holds a sweep of' in capsys.readouterr().err


# ------------------------------------------------------------------ failures

def test_invalid_override_fails_only_that_run(tmp_path, tfds_dir, monkeypatch, capsys):
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    sweep_file = tmp_path / 'bad.py'
    sweep_file.write_text('''
def get_sweep():
    return [{'model.embed_dimm': 32}, {'train.log_every': 0}, {'optimizer.lr': 1e-3}]
''')
    workdir = tmp_path / 'sweep'
    argv = _sweep_cmd(sweep_file, workdir, steps=1)[4:]
    with pytest.raises(SystemExit) as e:
        cli.main(['sweep', *argv])
    assert e.value.code == 1
    state = _state(workdir)
    assert state['embed_dimm=32']['status'] == 'failed'
    assert "unknown config key 'model.embed_dimm'" in state['embed_dimm=32']['error']
    assert "did you mean 'model.embed_dim'" in state['embed_dimm=32']['error']
    assert state['log_every=0']['status'] == 'failed'  # caught by the training process
    assert state['log_every=0']['error'] == 'train.log_every=0: must be >= 1'
    assert state['lr=0.001']['status'] == 'done'
    with open(workdir / 'results.csv') as f:
        rows = {r['run']: r for r in csv.DictReader(f)}
    assert rows['embed_dimm=32']['status'] == 'failed' and 'embed_dimm' in rows['embed_dimm=32']['error']
    assert rows['lr=0.001']['steps'] == '1'
    assert '2 run(s) failed' in capsys.readouterr().err


def test_launcher_dry_runs(tmp_path, capsys):
    sweep_file = tmp_path / 'lr_width.py'
    sweep_file.write_text(SWEEP_4)
    workdir = str(tmp_path / 'sweep')
    common = ['--config', f'{LM}:size=tiny', '--sweep', str(sweep_file), '--workdir', workdir,
              '--dry-run', '--config.train.steps=7']
    assert cli.main(['sweep', *common, '--launcher', 'slurm']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line, name in zip(lines, NAMES):
        assert line.startswith('sbatch --job-name=') and ' launch/slurm.sbatch --config ' in line
        assert f'--workdir {shlex.quote(os.path.join(workdir, name))}' in line
        assert '--config.train.steps=7' in line
    assert cli.main(['sweep', *common, '--launcher', 'tpu']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith('bash launch/tpu_pod.sh run -- ') for ln in lines)
    assert cli.main(['sweep', *common, '--parallel', '2']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith('python -m jaxbig train ') for ln in lines)
    assert not os.path.exists(workdir)  # a dry run writes nothing


@pytest.mark.parametrize('launcher', ['slurm', 'tpu'])
@pytest.mark.parametrize('dry_run', [True, False])
def test_missing_launch_scripts_are_one_line(launcher, dry_run, tmp_path, monkeypatch, capsys):
    """An installed (non-editable) jaxbig has no launch/ beside it: the launchers that need its
    scripts say what is missing and where to get it, before anything is written."""
    from jaxbig.sweep import launchers

    missing = str(tmp_path / 'site-packages' / 'launch')
    monkeypatch.setattr(launchers, 'LAUNCH_DIR', missing)
    sweep_file = tmp_path / 'lr_width.py'
    sweep_file.write_text(SWEEP_4)
    workdir = str(tmp_path / 'sweep')
    argv = ['--config', f'{LM}:size=tiny', '--sweep', str(sweep_file), '--workdir', workdir,
            '--launcher', launcher, *(['--dry-run'] if dry_run else [])]
    assert cli.main(['sweep', *argv]) == 2
    err = capsys.readouterr().err.strip()
    script = launchers.SCRIPTS[launcher]
    assert err.startswith('jaxbig: error:') and '\n' not in err, err
    assert f'launch/{script}' in err and missing in err and 'source checkout' in err, err
    assert 'not packaged' in err, err
    assert not os.path.exists(workdir)
    with pytest.raises(config_lib.ConfigError, match='source checkout'):
        launchers.train_command({'args': [], 'name': 'r'}, workdir, launcher)
    assert launchers.train_command({'args': [], 'name': 'r'}, workdir, 'local')[1:4] == [
        '-m', 'jaxbig', 'train']
