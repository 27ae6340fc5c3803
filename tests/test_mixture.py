"""Weighted mixtures of text sources (jaxbig.data.mixture): per-batch rows by largest
remainder against a NumPy reference, each source's rows exactly its own pipeline's batch,
determinism and small sources that repeat, one-line errors, and `jaxbig train` on two JSONL /
Parquet sources whose overall validation loss is the token-weighted mix of the sources'."""

import json
import os

import ml_collections
import numpy as np
import pytest
from conftest import TINY_LM, run_cli
from test_file_sources import DOCS, _write

from jaxbig import defaults
from jaxbig.data import mixture
from jaxbig.data.pipelines import lm


def _reference_rows(weights, batch, processes=1):
    """Largest remainder by hand: floor, then +1 unit to the largest fractional parts."""
    units = batch // processes
    exact = [units * w / sum(weights) for w in weights]
    rows = [int(np.floor(x)) for x in exact]
    for k in sorted(range(len(weights)), key=lambda k: (-(exact[k] - rows[k]), k)):
        if sum(rows) == units:
            break
        rows[k] += 1
    return [r * processes for r in rows]


@pytest.mark.parametrize('weights,batch,processes', [
    ([3, 1], 16, 1), ([1, 1, 1], 16, 2), ([0.7, 0.2, 0.1], 10, 1), ([5, 3, 2, 7], 64, 4),
    ([1, 1], 7, 1)])
def test_rows_by_largest_remainder(weights, batch, processes):
    rows = mixture.allocate(weights, batch, processes)
    assert rows.tolist() == _reference_rows(weights, batch, processes)
    assert rows.sum() == batch and (rows % processes == 0).all()
    share = np.asarray(weights) / sum(weights) * batch
    assert (np.abs(rows - share) <= processes).all()  # within one unit of the proportion


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp('mix')
    _write(str(root / 'big' / 'a.jsonl'), DOCS * 4)
    _write(str(root / 'small' / 'b.parquet'), DOCS[:5], key='body')
    data = ml_collections.ConfigDict(defaults.lm_data('pystdlib', 16))
    data.data_dir = str(root / 'data')
    data.mixture = [dict(name='files', path=str(root / 'big'), weight=3.0, label='big',
                         splits='validation=0.1'),
                    dict(name='files', path=str(root / 'small'), text_key='body', weight=1.0,
                         label='small', splits='validation=0.2')]
    return data


def test_each_source_fills_its_rows_with_its_own_batches(sources):
    pipe = lm.build_pipeline(sources, split='train', batch_size=8, seed=3)
    assert pipe.rows.tolist() == [6, 2] and pipe.labels == ['big', 'small']
    alone = [lm.build_pipeline(section, split='train', batch_size=n,
                               seed=lm._epoch_seed(3, 1_000_003 + k))
             for k, ((_, _, section), n) in enumerate(zip(mixture.sources(sources), [6, 2]))]
    small = alone[1]
    for i in (0, 1, 7, 40):  # 40 batches of 2 rows: the 5-record source repeats many epochs
        batch = pipe.get_batch(i)
        assert batch['inputs'].shape == (8, 16)
        np.testing.assert_array_equal(batch['inputs'][:6], alone[0].get_batch(i)['inputs'])
        np.testing.assert_array_equal(batch['inputs'][6:], small.get_batch(i)['inputs'])
        np.testing.assert_array_equal(batch['targets'], pipe.get_batch(i)['targets'])
    seen = {tuple(small.get_batch(i)['inputs'][r]) for i in range(small.num_sequences)
            for r in range(2)}
    assert len(seen) == small.num_sequences  # an epoch of the small source visits them all


def test_proportions_seen_over_100_batches_are_the_weights(sources):
    """At 0.8 / 0.2 the targets counted per source (what the loop logs as data/<label>/share)
    over 100 batches are within 1 % of the weights (packed rows: every target counts)."""
    section = ml_collections.ConfigDict(sources.to_dict())
    section.mixture[0]['weight'], section.mixture[1]['weight'] = 0.8, 0.2
    pipe = lm.build_pipeline(section, split='train', batch_size=10, seed=0)
    counts = {}
    for i in range(100):
        for label, n in pipe.batch_stats(pipe.get_batch(i)).items():
            counts[label] = counts.get(label, 0.0) + n
    row = pipe.seen_row(counts)
    assert abs(row['data/big/share'] - 0.8) < 0.01 and abs(row['data/small/share'] - 0.2) < 0.01
    assert row['data/big/targets'] + row['data/small/targets'] == 100 * 10 * 16
    stacked = {k: np.stack([pipe.get_batch(0)[k], pipe.get_batch(1)[k]]) for k in ('mask',)}
    both = pipe.batch_stats(stacked)  # steps_per_call > 1: a stack of batches
    assert both['big'] == 2 * 8 * 16 and both['small'] == 2 * 2 * 16


def test_processes_each_hold_their_share_of_every_source(sources):
    whole = lm.build_pipeline(sources, split='train', batch_size=8, seed=0)
    halves = [lm.build_pipeline(sources, split='train', batch_size=8, seed=0,
                                process_index=p, process_count=2) for p in (0, 1)]
    batch = whole.get_batch(2)['inputs']
    local = [h.get_batch(2)['inputs'] for h in halves]
    assert [h.rows.tolist() for h in halves] == [[6, 2]] * 2
    np.testing.assert_array_equal(np.concatenate([local[0][:3], local[1][:3]]), batch[:6])
    np.testing.assert_array_equal(np.concatenate([local[0][3:], local[1][3:]]), batch[6:])


@pytest.mark.parametrize('change,message', [
    (dict(weight=0), 'data.mixture[1].weight=0: expected a number > 0'),
    (dict(label='big'), "data.mixture[1]: label 'big' is used twice"),
    (dict(tokenizer='x.json'), "data.mixture[1] sets ['tokenizer']: the sources share"),
    (dict(weight=0.01), "data.mixture: ['small'] get no rows of a 8-row batch"),
    (dict(pth='x'), "data.mixture[1]: ['pth'] are not data keys"),
])
def test_bad_mixtures_are_one_line(sources, change, message):
    bad = sources.copy_and_resolve_references()
    with bad.unlocked():
        bad.mixture = [dict(bad.mixture[0]), dict(bad.mixture[1], **change)]
    with pytest.raises(ValueError) as e:
        lm.build_pipeline(bad, split='train', batch_size=8, seed=0)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_jaxbig_train_on_a_mixture_of_jsonl_and_parquet(tmp_path):
    """The user's path on JSONL (.zst) and Parquet sources: training runs, and the
    overall validation loss is the token-weighted mix of each source's (each example once)."""
    _write(str(tmp_path / 'code' / 'a.jsonl.zst'), DOCS * 3)
    _write(str(tmp_path / 'text' / 'b.parquet'), [d.upper() for d in DOCS] * 3, key='body')
    mix = json.dumps([
        dict(name='files', path=str(tmp_path / 'code'), weight=3, label='code',
             splits='validation=0.2'),
        dict(name='files', path=str(tmp_path / 'text'), text_key='body', weight=1, label='text',
             splits='validation=0.2')])
    proc = run_cli('train', '--config', 'experiments/lm.py:steps=2', '--workdir',
                   str(tmp_path / 'run'), *TINY_LM, f'--config.data.mixture={mix}',
                   f'--config.data.data_dir={tmp_path / "data"}',
                   '--config.evals.val.num_examples=0', '--config.train.eval_every=2')
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, 'run', 'metrics.jsonl'))]
    v = [r for r in rows if 'val/loss' in r][-1]
    parts = [(v[f'val/{s}/loss'], v[f'val/{s}/targets']) for s in ('code', 'text')]
    assert v['val/targets'] == sum(t for _, t in parts)
    assert v['val/loss'] == pytest.approx(sum(loss * t for loss, t in parts) / v['val/targets'],
                                          rel=1e-6)
    assert v['val/num_examples'] == v['val/code/num_examples'] + v['val/text/num_examples']
    for s in ('code', 'text'):  # bytes: a target is a byte, so bits per byte = loss / ln 2
        assert v[f'val/{s}/bits_per_byte'] == pytest.approx(v[f'val/{s}/loss'] / np.log(2),
                                                             rel=1e-6)
    assert np.isfinite(v['val/loss']) and 'train/loss' in rows[-1]
    logged = rows[-1]  # the proportions actually seen (3:1 weights, packed rows)
    assert logged['data/code/share'] == pytest.approx(0.75)
    assert logged['data/code/targets'] + logged['data/text/targets'] == 16 * 32
