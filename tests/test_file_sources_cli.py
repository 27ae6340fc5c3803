"""JSONL / Parquet sources the way a user meets them: `jaxbig train` on every format at once
(plain, gzip and zstd JSONL, Parquet shards of several row groups) resumes exactly; a
files source gives the batches of the same text as a folder, and two processes' batches
concatenate to one process's; MLM trains on files; a refusal exits 2 and leaves nothing
behind; a sweep over mixture weights plans and names its runs by label; saved (save_to_disk)
datasets train and feed text classification. (Readers and
errors: tests/test_file_sources.py; mixtures: tests/test_mixture.py.)"""

import json
import os

import ml_collections
import numpy as np
import pytest
from conftest import TINY_LM, metric_series, run_cli
from test_file_sources import _write

from jaxbig import cli, defaults
from jaxbig import config as config_lib
from jaxbig.data.pipelines import lm as lm_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 120 documents of 30-90 bytes: a few thousand bytes of text per split.
DOCS = [f'def g{i}(y):\n    return y + {i * 7}  # {"ab" * (i % 23)}\n' for i in range(120)]


def _every_format(root) -> None:
    """DOCS over five files: .jsonl, .jsonl.gz, .jsonl.zst and two Parquet shards."""
    for name, part in (('a.jsonl', DOCS[:25]), ('b.jsonl.gz', DOCS[25:50]),
                       ('c.jsonl.zst', DOCS[50:75]), ('d-0.parquet', DOCS[75:100]),
                       ('d-1.parquet', DOCS[100:])):
        _write(str(root / name), part)


MLM_TINY = ['--config.model.depth=2', '--config.model.width=64', '--config.model.mlp_dim=128',
            '--config.train.log_every=1']


def _train(workdir, data_root, data_dir, *args, config='experiments/lm.py:data=files',
           model=tuple(TINY_LM)):
    return run_cli('train', '--config', config, '--workdir', str(workdir), *model,
                   f'--config.data.path={data_root}', f'--config.data.data_dir={data_dir}',
                   '--config.data.splits=validation=0.2', '--config.evals.val.num_examples=16',
                   '--config.optimizer.decay_steps=4', '--config.train.eval_every=4',
                   '--config.train.checkpoint_every=0', *args)


def test_every_format_trains_and_resumes_exactly(tmp_path):
    _every_format(tmp_path / 'corpus')
    data = tmp_path / 'cache'
    _train(tmp_path / 'full', tmp_path / 'corpus', data, '--config.train.steps=4')
    _train(tmp_path / 'part', tmp_path / 'corpus', data, '--config.train.steps=2')
    _train(tmp_path / 'part', tmp_path / 'corpus', data, '--config.train.steps=4')
    full, resumed = metric_series(tmp_path / 'full'), metric_series(tmp_path / 'part')
    assert sorted(full) == sorted(resumed) == [1, 2, 3, 4]
    np.testing.assert_array_equal([resumed[s] for s in full], list(full.values()))
    val = metric_series(tmp_path / 'full', 'val/bits_per_byte')[4]
    loss = metric_series(tmp_path / 'full', 'val/loss')[4]
    assert val == pytest.approx(loss / np.log(2), rel=1e-6)  # bytes: one token a byte
    assert os.listdir(data) == ['jaxbig-files']  # one cache folder per source


def _lm_data(**overrides):
    return ml_collections.ConfigDict(dict(defaults.lm_data(seq_len=32), **overrides))


def test_files_give_the_batches_of_the_same_text_as_a_folder(tmp_path):
    """The folder's train split (files picked by a hash of the path) written in its order
    as one JSONL: the LM pipeline's batches are equal, packed and not."""
    folder = tmp_path / 'folder'
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f'doc{i:03d}.py').write_text(doc)
    from jaxbig.data.text.documents import FolderDocuments

    train = FolderDocuments(str(folder), 'train')
    assert 0 < len(train) < len(DOCS)
    jsonl = tmp_path / 'files' / 'train.jsonl'
    _write(str(jsonl), [(folder / p).read_text() for p in train.paths])
    for pack in (True, False):
        sources = {'folder': _lm_data(name='folder', path=str(folder), pack=pack),
                   'files': _lm_data(name='files', path=str(jsonl), splits='train=*',
                                     data_dir=str(tmp_path / 'cache'), pack=pack)}
        pipes = {k: lm_pipeline.build_pipeline(c, split='train', batch_size=8, seed=3)
                 for k, c in sources.items()}
        for step in (0, 1, 7):
            a, b = (pipes[k].get_batch(step) for k in ('folder', 'files'))
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f'{pack} {step} {key}')


def test_two_processes_read_one_process_batches(tmp_path):
    _every_format(tmp_path / 'corpus')
    config = _lm_data(name='files', path=str(tmp_path / 'corpus'), splits='validation=0.2',
                      data_dir=str(tmp_path / 'cache'))
    lm_pipeline.prepare(config)
    one = lm_pipeline.build_pipeline(config, split='train', batch_size=8, seed=1)
    hosts = [lm_pipeline.build_pipeline(config, split='train', batch_size=8, seed=1,
                                        process_index=p, process_count=2) for p in (0, 1)]
    for step in (0, 5):
        want, got = one.get_batch(step), [h.get_batch(step) for h in hosts]
        for key in want:
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])


def test_mlm_trains_on_files(tmp_path):
    _every_format(tmp_path / 'corpus')
    _train(tmp_path / 'mlm', tmp_path / 'corpus', tmp_path / 'cache', '--config.train.steps=4',
           config='experiments/mlm.py:data=files,steps=4,seq=32,batch=16', model=MLM_TINY)
    assert sorted(metric_series(tmp_path / 'mlm')) == [1, 2, 3, 4]
    assert np.isfinite(metric_series(tmp_path / 'mlm', 'val/loss')[4])


@pytest.mark.parametrize('case,message', [
    ('missing key', "c.jsonl:3: no data.text_key='text' (found ['body'])"),
    ('glob matches nothing', "data.path='"),
])
def test_bad_data_exits_2_and_leaves_nothing(tmp_path, capsys, case, message):
    root = tmp_path / 'corpus'
    _write(str(root / 'a.jsonl'), DOCS[:20])
    if case == 'missing key':
        (root / 'c.jsonl').write_text('{"text": "x"}\n\n{"body": "y"}\n')
    path = root if case == 'missing key' else root / 'nothing-*.jsonl'
    argv = ['train', '--config', 'experiments/lm.py:data=files', '--workdir',
            str(tmp_path / 'run'), *TINY_LM, f'--config.data.path={path}',
            f'--config.data.data_dir={tmp_path / "cache"}', '--config.data.splits=train=*']
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('jaxbig: error: ') and message in err[0], err
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'cache').exists()


def test_a_sweep_over_mixture_weights(tmp_path, capsys):
    """experiments/sweeps/lm_mixture.py as documented: one run per weight pair, named by
    the entries' labels; each run's config holds its weights and the base's sources."""
    import test_sweep

    sweep_file = os.path.join(REPO, 'experiments', 'sweeps', 'lm_mixture.py')
    spec, overrides = test_sweep.documented_command(sweep_file)
    capsys.readouterr()
    assert cli.main(['sweep', '--config', spec, '--sweep', sweep_file, '--workdir',
                     str(tmp_path / 'sweep'), '--dry-run', *overrides]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split('--workdir ')[-1].split()[0].rsplit('/', 1)[-1] for line in lines]
    assert names == ['code.weight=0.8,web.weight=0.2', 'code.weight=0.5,web.weight=0.5',
                     'code.weight=0.2,web.weight=0.8']
    config = config_lib.load(os.path.join(REPO, spec))
    config_lib.apply_overrides(config, [o[len('--config.'):].split('=', 1) for o in overrides]
                               + [('data.mixture.code.weight', '0.8'),
                                  ('data.mixture.web.weight', '0.2')])
    assert [(e['label'], e['weight'], e['path']) for e in config.data.mixture] == [
        ('code', 0.8, 'code/'), ('web', 0.2, 'web/')]
    with pytest.raises(config_lib.ConfigError, match=r"'text' names no single entry of the "
                       r"list \(its entries: \['code', 'web'\], or an index\)"):
        config_lib.apply_overrides(config, [('data.mixture.text.weight', '1')])


def test_text_classes_from_a_saved_dataset_equal_the_same_records_as_jsonl(tmp_path):
    """data.name='hf_disk' for text classification: a DatasetDict's splits (and a single
    Dataset split by data.splits) give the batches of the same records as JSONL files."""
    import datasets

    from jaxbig.data.pipelines import text_classes

    rows = [{'text': f'review {i}: ' + 'good ' * (i % 4), 'label': ['neg', 'pos'][i % 2]}
            for i in range(40)]
    saved = tmp_path / 'saved'
    datasets.DatasetDict({'train': datasets.Dataset.from_list(rows[:30]),
                          'validation': datasets.Dataset.from_list(rows[30:])}
                         ).save_to_disk(str(saved))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / 'one'))
    for name, part in (('train.jsonl', rows[:30]), ('val.jsonl', rows[30:])):
        with open(tmp_path / name, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in part)
    base = dict(pipeline='text_classes', text_key='', label_key='', seq_len=24,
                tokenizer='bytes', eos_id=-1)
    pairs = [  # (hf_disk source, the same records as JSONL)
        (dict(name='hf_disk', path=str(saved), splits=''),
         dict(name='files', path=str(tmp_path / '*.jsonl'),
              splits='train=train.jsonl,validation=val.jsonl')),
        (dict(name='hf_disk', path=str(tmp_path / 'one'), splits='validation=0.25'),
         dict(name='files', path=str(tmp_path / 'all.jsonl'), splits='validation=0.25'))]
    with open(tmp_path / 'all.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    for disk, files in pairs:
        disk, files = (ml_collections.ConfigDict(dict(base, **c)) for c in (disk, files))
        assert text_classes.file_labels(disk)[1] == ('neg', 'pos')
        for split in ('train', 'validation'):
            a, b = (text_classes.build_pipeline(c, split=split, batch_size=4, seed=2)
                    for c in (disk, files))
            for step in (0, 3):
                for key, value in a.get_batch(step).items():
                    np.testing.assert_array_equal(value, b.get_batch(step)[key], err_msg=key)
    bad = ml_collections.ConfigDict(dict(base, name='hf_disk', path=str(saved), splits='',
                                         label_key='stars'))
    with pytest.raises(config_lib.ConfigError, match=r"saved: no column 'stars' \(found "):
        text_classes.file_labels(bad)


def test_jaxbig_train_on_a_saved_dataset(tmp_path):
    """`experiments/lm.py:data=hf_disk` on a DatasetDict saved with save_to_disk: trains
    and scores its own validation split (the same model as above: compiled once)."""
    import datasets

    saved = tmp_path / 'saved'
    datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': DOCS[:100]}),
                          'validation': datasets.Dataset.from_dict({'text': DOCS[100:]})}
                         ).save_to_disk(str(saved))
    _train(tmp_path / 'run', saved, tmp_path / 'cache', '--config.train.steps=4',
           '--config.data.splits=', config='experiments/lm.py:data=hf_disk')
    assert sorted(metric_series(tmp_path / 'run')) == [1, 2, 3, 4]
    assert metric_series(tmp_path / 'run', 'val/num_examples')[4] > 0
    assert os.listdir(tmp_path / 'cache') == ['jaxbig-hf-disk']
