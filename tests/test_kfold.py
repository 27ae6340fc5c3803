"""k-fold cross-validation (`data.folds`, `sweep.kfold`):

* fold arithmetic (`jaxbig.data.folds.fold_indices`) against scikit-learn: an exact
  partition, StratifiedKFold's per-class allocation (so within one per class), KFold's fold
  sizes, deterministic in the seed;
* at the pipeline level, for the digits images and the text task: what the training
  pipeline yields and what the 'fold' split yields partition the training split exactly,
  every example in exactly one fold, stratified within one per class; held-out splits and
  k=0 unchanged (bit-identical batches);
* the report: per-configuration mean ± sample std equal NumPy over the per-fold runs'
  metrics.jsonl (hand-written runs, instant; and a real sweep, below);
* a real 2 x 2-fold sweep with --parallel 2, stopped by SIGTERM once a run is done and
  relaunched (slow: ~1 min of tiny CNN runs);
* error paths: k=1, index >= k, 'fold' with folds off, stratify without labels,
  sweep.kfold(1), a kfold sweep of a config without data.folds.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter

import ml_collections
import numpy as np
import pytest
from conftest import REPO, xla_flags

from jaxbig import cli, data, sweep, writers
from jaxbig import config as config_lib
from jaxbig.config import ConfigError
from jaxbig.data import folds as folds_lib
from jaxbig.data.pipelines import text_classes
from jaxbig.sweep import cv, report

IMAGE = os.path.join(REPO, 'experiments', 'finetune_image.py')
LM = os.path.join(REPO, 'experiments', 'lm.py')


# ------------------------------------------------------------------ fold arithmetic

def _labels(seed, n=257, classes=7):
    """Imbalanced labels (class c ~ c + 1) in random order, one class smaller than k,
    numbered in order of first appearance (the class order StratifiedKFold deals in)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, size=n, p=np.arange(1, classes + 1) / sum(range(1, classes + 1)))
    labels[:3] = classes  # a class of 3 examples: absent from some of k >= 4 folds
    labels = rng.permutation(labels)
    _, first = np.unique(labels, return_index=True)
    return np.argsort(np.argsort(first))[labels]


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('k', [2, 5, 10])
def test_stratified_folds_match_sklearn_allocation(seed, k):
    from sklearn.model_selection import StratifiedKFold

    labels = _labels(seed)
    n, classes = len(labels), labels.max() + 1
    folds = folds_lib.fold_indices(labels, k, seed=seed)
    assert len(folds) == k
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(n))  # partition
    counts = np.array([np.bincount(labels[f], minlength=classes) for f in folds])
    with warnings.catch_warnings():  # the 3-example class: "least populated class" warning
        warnings.simplefilter('ignore', UserWarning)
        ref = [test for _, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(
            np.zeros(n), labels)]
    ref_counts = np.array([np.bincount(labels[f], minlength=classes) for f in ref])
    np.testing.assert_array_equal(counts, ref_counts)  # sklearn's per-(fold, class) allocation
    assert (counts.max(0) - counts.min(0)).max() <= 1  # per class within one
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.all(np.diff(f) > 0) for f in folds)  # sorted, no repeats


@pytest.mark.parametrize('n,k', [(10, 3), (1438, 5), (7, 7)])
def test_unstratified_folds_have_kfold_sizes(n, k):
    from sklearn.model_selection import KFold

    folds = folds_lib.fold_indices(n, k, seed=1, stratify=False)
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(n))
    assert [len(f) for f in folds] == [len(t) for _, t in KFold(k).split(np.zeros(n))]


def test_folds_are_deterministic_in_the_seed():
    labels = _labels(0)
    a = folds_lib.fold_indices(labels, 5, seed=3)
    b = folds_lib.fold_indices(labels.copy(), 5, seed=3)
    c = folds_lib.fold_indices(labels, 5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_fold_arithmetic_errors():
    with pytest.raises(ValueError, match='at least 2 folds'):
        folds_lib.fold_indices(10, 1, stratify=False)
    with pytest.raises(ValueError, match='3 examples cannot fill 5 folds'):
        folds_lib.fold_indices(3, 5, stratify=False)
    with pytest.raises(ValueError, match='needs labels'):
        folds_lib.fold_indices(10, 2)


def _folded(k=0, index=0, **extra):
    return ml_collections.ConfigDict({
        'train_split': 'train', 'label_key': 'label',
        'folds': {'k': k, 'index': index, 'seed': 0, 'stratify': True}, **extra})


@pytest.mark.parametrize('k,index,match', [
    (1, 0, r'data.folds.k=1: expected >= 2 folds \(0 = no folds\)'),
    (-2, 0, r'data.folds.k=-2: expected >= 2'),
    (3, 3, r'data.folds.index=3: expected 0 .. 2 \(data.folds.k=3\)'),
    (3, -1, r'data.folds.index=-1'),
])
def test_folds_config_errors(k, index, match):
    with pytest.raises(ConfigError, match=match):
        folds_lib.selects(_folded(k, index), 'train')


def test_fold_split_needs_folds_and_other_splits_pass():
    with pytest.raises(ConfigError, match=r"data split 'fold' .* data.folds.k is 0 \(off\)"):
        folds_lib.selects(_folded(0), 'fold')
    with pytest.raises(ConfigError, match="data split 'fold'"):
        folds_lib.selects(ml_collections.ConfigDict({'train_split': 'train'}), 'fold')
    assert not folds_lib.selects(_folded(0), 'train')
    assert not folds_lib.selects(_folded(3), 'test')
    assert folds_lib.selects(_folded(3), 'train') and folds_lib.selects(_folded(3), 'fold')
    assert folds_lib.source_split(_folded(3), 'fold') == 'train'


# ------------------------------------------------------------------ pipelines

@pytest.fixture(scope='module')
def digits_config(tfds_dir):
    config = config_lib.load(f'{IMAGE}:batch=64')
    data.prepare(config.data)
    return config.data


def _epoch(config, split, batch=64, seed=3):
    """Every example the pipeline yields in its first epoch: Counter of (pixels, label)."""
    pipe = data.build_pipeline(config, split=split, batch_size=batch, seed=seed)
    n = len(pipe.split)
    batches = [pipe.get_batch(i) for i in range(-(-n // batch))]
    images = np.concatenate([b['image'] for b in batches])[:n]
    labels = np.concatenate([b['label'] for b in batches])[:n]
    return Counter(zip(map(bytes, images.reshape(n, -1)), labels.tolist()))


def test_digits_folds_partition_the_training_split(digits_config):
    """k=5: each run's training pipeline and its 'fold' split together yield the whole
    training split with nothing shared; the five folds yield every example exactly once,
    each class spread within one; the test split is the same as without folds."""
    config = ml_collections.ConfigDict(digits_config.to_dict())
    whole, test = _epoch(config, 'train'), _epoch(config, 'test')
    assert sum(whole.values()) == len(whole) == 1438  # distinct examples
    config.folds.k = 5
    held_out = Counter()
    per_class = []
    for index in range(5):
        config.folds.index = index
        train, fold = _epoch(config, 'train'), _epoch(config, 'fold', seed=index)
        assert not set(train) & set(fold)
        assert train + fold == whole
        held_out += fold
        per_class.append(np.bincount([label for _, label in fold.elements()], minlength=10))
        assert _epoch(config, 'test') == test
    assert held_out == whole  # every example validated exactly once
    per_class = np.array(per_class)
    assert (per_class.max(0) - per_class.min(0)).max() <= 1
    assert sorted(per_class.sum(1)) == [287, 287, 288, 288, 288]


def test_digits_folds_do_not_depend_on_the_training_seed(digits_config):
    config = ml_collections.ConfigDict(digits_config.to_dict())
    config.folds.k, config.folds.index = 4, 2
    assert _epoch(config, 'fold', seed=0) == _epoch(config, 'fold', seed=9)
    config.folds.seed = 1  # data.folds.seed moves the assignment
    moved = _epoch(config, 'fold')
    config.folds.seed = 0
    assert moved != _epoch(config, 'fold')


def test_k0_batches_are_bit_identical_to_no_folds(digits_config, tfds_dir):
    for base in (digits_config, _text_config(tfds_dir)):
        with_folds = ml_collections.ConfigDict(base.to_dict())
        without = ml_collections.ConfigDict({k: v for k, v in base.to_dict().items()
                                             if k != 'folds'})
        assert with_folds.folds.k == 0 and 'folds' not in without
        for split in (base.train_split, base.val_split):
            a = data.build_pipeline(with_folds, split=split, batch_size=16, seed=5)
            b = data.build_pipeline(without, split=split, batch_size=16, seed=5)
            for i in range(3):
                x, y = a.get_batch(i), b.get_batch(i)
                assert x.keys() == y.keys()
                assert all(np.array_equal(x[key], y[key]) for key in x)


def test_views_stratify_needs_labels(digits_config):
    config = ml_collections.ConfigDict(digits_config.to_dict())
    config.folds.k, config.label_key = 3, ''
    with pytest.raises(ConfigError, match='stratify=true needs labels'):
        data.build_pipeline(config, split='train', batch_size=8, seed=0)
    config.folds.stratify = False  # unlabelled images fold by count
    pipe = data.build_pipeline(config, split='fold', batch_size=8, seed=0)
    assert len(pipe.split) in (479, 480) and 'label' not in pipe.get_batch(0)
    config.folds.k, config.label_key = 0, 'label'
    with pytest.raises(ConfigError, match="data split 'fold'"):
        data.build_pipeline(config, split='fold', batch_size=8, seed=0)


def _text_config(tfds_dir):
    config = config_lib.load(os.path.join(REPO, 'experiments', 'finetune_text.py:seq=32'))
    config.data.data_dir = tfds_dir
    return config.data


def test_text_folds_partition_the_training_files(tfds_dir):
    """The text task folds files (stratified by package): the training and 'fold' pipelines
    draw from complementary file sets; every training file is in exactly one fold; each
    snippet of the fold pipeline is a window of one of its own files of its label."""
    config = _text_config(tfds_dir)
    files, classes = text_classes.load_files(tfds_dir, config.min_files, config.tokenizer,
                                             config.eos_id)  # the pipeline's cached copy
    docs, labels = files['train']
    row_of = {id(d): r for r, d in enumerate(docs)}  # some files have the same text
    config.folds.k = 3
    held_out, per_class = [], []
    for index in range(3):
        config.folds.index = index
        train = data.build_pipeline(config, split='train', batch_size=8, seed=0)
        fold = data.build_pipeline(config, split='fold', batch_size=8, seed=0)
        a, b = [row_of[id(d)] for d in train.docs], [row_of[id(d)] for d in fold.docs]
        assert sorted(a + b) == list(range(len(docs)))  # complementary, nothing shared
        np.testing.assert_array_equal(train.labels, labels[a])
        np.testing.assert_array_equal(fold.labels, labels[b])
        held_out += b
        per_class.append(np.bincount(fold.labels, minlength=len(classes)))
        batch = fold.get_batch(0)
        for row, mask, label in zip(batch['inputs'], batch['mask'], batch['label']):
            window = bytes(row[: int(mask.sum())].astype(np.uint8))
            own = [bytes(d) for d, c in zip(fold.docs, fold.labels) if c == label]
            assert any(window in d for d in own)
    assert sorted(held_out) == list(range(len(docs)))  # every file in exactly one fold
    per_class = np.array(per_class)
    assert (per_class.max(0) - per_class.min(0)).max() <= 1


def test_features_mode_folds_its_source(tfds_dir, tmp_path):
    """mode=features embeds its source's parts: the 'fold' split is the embedding of the
    source's held-out fold, 'train' of the rest (data.source.folds; sweep.kfold(k,
    section='data.source.folds'))."""
    from test_finetune import fake_lm_workdir

    fake_lm_workdir(tmp_path / 'lm')
    text = os.path.join(REPO, 'experiments', 'finetune_text.py')
    config = config_lib.load(f'{text}:init={tmp_path / "lm"},mode=features,examples=32,seq=32')
    runs = sweep.kfold(3, section='data.source.folds')
    config_lib.apply_overrides(config, [(k, sweep.arg_value(v)) for k, v in runs[1].items()])
    config.data.embed_batch, config.data.embed_examples.fold = 32, 32
    for split in ('fold', 'train'):
        pipe = data.build_pipeline(config.data, split=split, batch_size=16, seed=0)
        source = data.build_pipeline(config.data.source, split=split, batch_size=32, seed=0)
        assert pipe.features.shape == (32, 16)
        np.testing.assert_array_equal(pipe.labels, source.get_batch(0)['label'])
    config.data.source.folds.k = 0
    with pytest.raises(ConfigError, match="data split 'fold'"):
        data.build_pipeline(config.data, split='fold', batch_size=16, seed=0)


# ------------------------------------------------------------------ sweep helpers

def test_kfold_axis_names_and_errors():
    runs = sweep.product(sweep.axis('optimizer.lr', [1e-3, 1e-2]), sweep.kfold(3))
    assert len(runs) == 6
    assert runs[1] == {'optimizer.lr': 1e-3, 'data.folds.k': 3, 'data.folds.index': 1,
                       'data.folds.seed': 0, 'evals.val.split': 'fold'}
    assert sweep.run_names(runs) == [f'lr={lr},fold={i}of3' for lr in ('0.001', '0.01')
                                     for i in range(3)]
    assert sweep.run_names(sweep.kfold(2, seed=7, evals=('val', 'test'))) == [
        'fold=0of2,fold_seed=7', 'fold=1of2,fold_seed=7']
    assert sweep.kfold(2, section='data.source.folds')[1]['data.source.folds.index'] == 1
    assert sweep.run_names([{'data.folds.index': 1}]) == ['index=1']  # no k beside: no axis
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ConfigError, match=r'sweep.kfold\(k=.*\): expected k >= 2'):
            sweep.kfold(bad)


def test_kfold_sweep_of_a_config_without_folds_fails_its_runs(tmp_path, capsys):
    sweep_file = tmp_path / 'cv.py'
    sweep_file.write_text('from jaxbig import sweep\n\ndef get_sweep():\n'
                          '    return sweep.kfold(2)\n')
    assert cli.main(['sweep', '--config', f'{LM}:size=tiny', '--sweep', str(sweep_file),
                       '--workdir', str(tmp_path / 'w'), '--dry-run']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# invalid: --config.data.folds.k: unknown config key "
                               "'data.folds.k'")
    assert len(lines) == 4  # both runs: the error, then the command


def _write_run(workdir, name, rows):
    os.makedirs(workdir / name)
    with open(workdir / name / 'metrics.jsonl', 'w') as f:
        f.writelines(json.dumps(row) + '\n' for row in rows)


def test_cv_table_is_numpy_mean_and_sample_std_of_the_folds(tmp_path):
    """Hand-written runs (2 configurations x 3 folds, one fold failed, one plain run
    chained in): each configuration's mean / std (ddof=1) of every value is NumPy's over
    its done folds' metrics.jsonl; the markdown shows them as 'mean ± std'."""
    runs = sweep.chain(sweep.product(sweep.axis('optimizer.lr', [0.1, 0.2]), sweep.kfold(3)),
                       sweep.fixed(**{'optimizer.lr': 0.3}))
    names = sweep.run_names(runs)
    rng = np.random.default_rng(0)
    state = {'config': 'x.py', 'sweep': 'cv.py', 'overrides': [], 'runs': {}}
    for name, run in zip(names, runs):
        rows = [{'step': s, 'train/loss': float(rng.uniform(1, 2)),
                 'val/accuracy': float(rng.uniform()), 'val/loss': float(rng.uniform(1, 3))}
                for s in (5, 10)]
        _write_run(tmp_path, name, rows)
        status = 'failed' if name == 'lr=0.2,fold=1of3' else 'done'
        state['runs'][name] = {'status': status, 'overrides': run,
                               'wall_s': float(rng.uniform(5, 9))}
    paths = report.write_report(str(tmp_path), state)
    assert str(tmp_path / cv.CSV_FILE) in paths
    with open(tmp_path / cv.CSV_FILE) as f:
        table = list(csv.DictReader(f))
    assert [r['config'] for r in table] == ['lr=0.1', 'lr=0.2']
    assert [r['folds'] for r in table] == ['3/3', '2/3']
    assert [r['status'] for r in table] == ['done', 'incomplete']
    assert [float(r['optimizer.lr']) for r in table] == [0.1, 0.2]
    assert 'data.folds.index' not in table[0] and 'evals.val.split' not in table[0]
    for row, lr in zip(table, ('0.1', '0.2')):
        done = [n for n in names if n.startswith(f'lr={lr},') and state['runs'][n]['status'] == 'done']
        series = [writers.read_metrics(str(tmp_path / n)) for n in done]
        expect = {'train/loss': [s[-1]['train/loss'] for s in series],
                  'val/accuracy': [s[-1]['val/accuracy'] for s in series],
                  'best val/accuracy': [max(r['val/accuracy'] for r in s) for s in series],
                  'best val/loss': [min(r['val/loss'] for r in s) for s in series],
                  'wall_s': [state['runs'][n]['wall_s'] for n in done]}
        for column, values in expect.items():
            np.testing.assert_allclose(float(row[f'{column} mean']), np.mean(values), rtol=1e-12)
            np.testing.assert_allclose(float(row[f'{column} std']), np.std(values, ddof=1),
                                       rtol=1e-12)
    md = (tmp_path / report.MD_FILE).read_text()
    assert '## Cross-validation: mean ± sample std (ddof=1) over folds' in md
    mean, std = float(table[0]['val/accuracy mean']), float(table[0]['val/accuracy std'])
    assert f'| {mean:.4g} ± {std:.2g} |' in md
    assert md.count('\n| lr=0.1,fold=') == 3 and '\n| lr=0.3 |' in md  # per-fold rows too
    assert (tmp_path / 'final_vs_optimizer.lr.png').exists()
    assert (tmp_path / 'final_vs_data.folds.index.png').exists()
    assert not (tmp_path / 'final_vs_data.folds.k.png').exists()


# ------------------------------------------------------------------ a real sweep

TINY_CNN = ['--config.model.backbone.variant=cnn', '--config.model.backbone.width=8',
            '--config.model.backbone.cnn_layers=1', '--config.train.log_every=2',
            '--config.train.eval_every=0', '--config.train.checkpoint_every=2',
            '--config.evals.val.num_examples=96', '--config.evals.val.batch_size=48']
STEPS = 8
SWEEP_2X2 = '''
from jaxbig import sweep

def get_sweep():
    return sweep.product(sweep.axis('optimizer.lr', [0.01, 0.03]), sweep.kfold(2))
'''
NAMES = ['lr=0.01,fold=0of2', 'lr=0.01,fold=1of2', 'lr=0.03,fold=0of2', 'lr=0.03,fold=1of2']


def _sweep_cmd(sweep_file, workdir):
    return [sys.executable, '-m', 'jaxbig', 'sweep', '--config',
            f'{IMAGE}:mode=full,steps={STEPS},batch=32', '--sweep', str(sweep_file),
            '--workdir', str(workdir), '--parallel', '2', *TINY_CNN]


def _env():
    return dict(os.environ, JAX_PLATFORMS='cpu',
                XLA_FLAGS=xla_flags(1))


def _state(workdir):
    path = workdir / sweep.STATE_FILE
    return json.loads(path.read_text())['runs'] if path.exists() else {}


@pytest.fixture(scope='module')
def cv_sweep(tmp_path_factory, digits_config):
    """2 learning rates x 2 folds, 2 at a time; SIGTERM to the sweep once a run is done
    (its running trainings save a checkpoint and stop), then the same command again."""
    tmp = tmp_path_factory.mktemp('kfold_sweep')
    sweep_file, workdir = tmp / 'cv.py', tmp / 'sweep'
    sweep_file.write_text(SWEEP_2X2)
    proc = subprocess.Popen(_sweep_cmd(sweep_file, workdir), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(r['status'] == 'done' for r in _state(workdir).values()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    first = proc.communicate(timeout=300)[1]
    after_stop = _state(workdir)
    again = subprocess.run(_sweep_cmd(sweep_file, workdir), cwd=REPO, env=_env(), check=False,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    return {'workdir': workdir, 'after_stop': after_stop, 'first': first,
            'stderr': again.stderr}


@pytest.mark.slow  # ~1 min: six tiny CNN trainings in subprocesses
def test_kfold_sweep_parallel_stopped_and_resumed(cv_sweep):
    workdir, state = cv_sweep['workdir'], _state(cv_sweep['workdir'])
    assert 'stopping' in cv_sweep['first']
    stopped = cv_sweep['after_stop']
    done = [n for n, r in stopped.items() if r['status'] == 'done']
    assert 1 <= len(done) < 4, stopped
    assert {r['status'] for r in stopped.values()} <= {'done', 'stopped', 'pending'}, stopped
    assert sorted(state) == NAMES and {r['status'] for r in state.values()} == {'done'}
    for name, r in stopped.items():  # done runs are not run again; stopped ones resumed
        assert state[name]['attempts'] == r['attempts'] + (r['status'] != 'done'), name
    assert '4/4 done, 0 running, 0 failed' in cv_sweep['stderr']
    for name in NAMES:  # each run held out its own fold
        config = json.loads((workdir / name / 'config.json').read_text())
        assert config['data']['folds'] == {'k': 2, 'index': int(name[-4]), 'seed': 0,
                                           'stratify': True}
        assert config['evals']['val']['split'] == 'fold'
        assert writers.read_metrics(str(workdir / name))[-1]['step'] == STEPS
    with open(workdir / cv.CSV_FILE) as f:
        table = list(csv.DictReader(f))
    assert [(r['config'], r['folds'], r['status']) for r in table] == [
        ('lr=0.01', '2/2', 'done'), ('lr=0.03', '2/2', 'done')]
    for row, prefix in zip(table, ('lr=0.01,', 'lr=0.03,')):
        finals = [writers.read_metrics(str(workdir / n))[-1] for n in NAMES if n.startswith(prefix)]
        for metric in ('val/accuracy', 'val/macro_f1', 'train/loss'):
            values = [m[metric] for m in finals]
            np.testing.assert_allclose(float(row[f'{metric} mean']), np.mean(values), rtol=1e-12)
            np.testing.assert_allclose(float(row[f'{metric} std']), np.std(values, ddof=1),
                                       rtol=1e-12)
    md = (workdir / report.MD_FILE).read_text()
    assert md.index('## Cross-validation') < md.index('| lr=0.01,fold=0of2 |')
