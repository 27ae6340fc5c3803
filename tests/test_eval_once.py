"""Evaluators score each example of their split exactly once: the one-pass pipelines
(jaxbig/data/one_pass.py and every pipeline module's `one_pass=True`), the classification
evaluator on digits (whole test split, a k-fold fold) and its scikit-learn averages."""

import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from jaxbig import config as config_lib
from jaxbig import data
from jaxbig import run as run_lib
from jaxbig.config import ConfigError
from jaxbig.data import folds, image_sources, one_pass
from jaxbig.data.pipelines import conditional, features, seq2seq
from jaxbig.data.pipelines.text_classes import SnippetPipeline
from jaxbig.evals import classification

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(REPO, 'experiments/finetune_image.py')
TINY_CNN = dict(variant='cnn', width=8, cnn_layers=1)


def covered(pipe, get_ids, *, process_count=1, build=None):
    """(real example ids in visiting order, example_mask sum) over all batches of a one-pass
    pipeline, its rows gathered from `process_count` processes (`build(p)` makes process p's
    pipeline). Checks every padding row is a copy of a real row of the pass."""
    pipes = [build(p) for p in range(process_count)] if build else [pipe]
    ids, total = [], 0.0
    for i in range(pipes[0].num_batches):
        for p in pipes:  # in global row order
            batch, rows = p.get_batch(i), np.asarray(get_ids(p, i))
            mask = batch['example_mask']
            assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
            ids += rows[mask > 0].tolist()
            total += float(mask.sum())
            assert np.all(rows[mask == 0] == ids[-1])  # padding: the pass's last example
    return ids, total


# ------------------------------------------------------------------ the row arithmetic


@pytest.mark.parametrize('n,batch,procs', [(10, 4, 1), (12, 4, 1), (12, 4, 2), (7, 8, 2),
                                           (1, 6, 3), (359, 48, 1), (288, 96, 4)])
def test_one_pass_rows_cover_each_position_once(n, batch, procs):
    plans = [one_pass.OnePass(n, batch_size=batch, process_index=p, process_count=procs)
             for p in range(procs)]
    assert plans[0].num_batches == -(-n // batch)
    seen, masks = [], 0.0
    for i in range(plans[0].num_batches):
        for plan in plans:
            pos, mask = plan.rows(i)
            assert len(pos) == batch // procs and mask.dtype == np.float32
            np.testing.assert_array_equal(mask, plan.global_rows(i) < n)
            assert np.all(pos[mask == 0] == n - 1)  # padding repeats the last example
            seen += pos[mask > 0].tolist()
            masks += mask.sum()
    assert sorted(seen) == list(range(n)) and seen == list(range(n)) and masks == n
    with pytest.raises(IndexError):
        plans[0].rows(plans[0].num_batches)


def test_count_zero_is_all_and_too_many_is_a_config_error():
    assert one_pass.count(0, 359, split='test') == 359
    assert one_pass.count(100, 359, split='test') == 100
    with pytest.raises(ConfigError, match=r"^num_examples=360: split 'test' has only 359"):
        one_pass.count(360, 359, split='test')
    with pytest.raises(ConfigError, match='num_examples=-1'):
        one_pass.count(-1, 359, split='test')
    with pytest.raises(ValueError, match='without one_pass'):
        one_pass.plan(False, 5, 10, split='x', batch_size=2)


def test_example_rows_endless_and_one_pass():
    endless = image_sources.ExampleRows(10, batch_size=4, seed=3)
    rows, ids, mask = endless.batch(2)
    assert mask is None and not hasattr(endless, 'num_batches')
    np.testing.assert_array_equal(ids, image_sources.IndexOrder(10, 3).ids(np.arange(8, 12)))
    order = image_sources.IndexOrder(10, 0)._order(0)
    for procs in (1, 2):
        parts = [image_sources.ExampleRows(10, batch_size=4, seed=0, process_index=p,
                                           process_count=procs, one_pass=True, num_examples=7)
                 for p in range(procs)]
        assert parts[0].num_examples == 7 and parts[0].num_batches == 2
        got = [i for b in range(2) for r in parts for i, m in zip(*r.batch(b)[1:])
               if m > 0]
        assert got == order[:7].tolist()  # the first 7 of the seed's epoch 0, each once
    with pytest.raises(one_pass.NumExamplesError, match="split 'train' has only 10"):
        image_sources.ExampleRows(10, batch_size=4, seed=0, one_pass=True, num_examples=11,
                                  split='train')


# ------------------------------------------------------------------ LM windows and documents


@pytest.fixture(scope='module')
def lm_config(tfds_dir):
    return ml_collections.ConfigDict(dict(pipeline='lm', name='pystdlib', data_dir=tfds_dir,
                                          seq_len=2047, pack=True, train_split='train',
                                          val_split='validation'))


def lm_pass(config, batch, *, num_examples=0, process_index=0, process_count=1):
    return data.build_pipeline(config, split='validation', batch_size=batch, seed=0,
                               process_index=process_index, process_count=process_count,
                               one_pass=True, num_examples=num_examples)


def lm_ids(pipe, i):
    return pipe.sequence_ids(i)


def test_lm_one_pass_covers_each_window_once(lm_config):
    whole = lm_pass(lm_config, 8)
    n = whole.num_examples
    assert n == whole.num_sequences > 100  # every window of seq_len + 1 bytes of the split
    divisor = max(d for d in range(1, 17) if n % d == 0)
    for batch in sorted({7, 61, divisor, n}):  # batch sizes that do and do not divide n
        pipe = lm_pass(lm_config, batch)
        assert pipe.num_batches == -(-n // batch)
        ids, total = covered(pipe, lm_ids)
        assert sorted(ids) == list(range(n)) and total == n
    for batch in (50, 64):  # a subset: the first 600 of epoch 0's order, whatever the batch
        pipe = lm_pass(lm_config, batch, num_examples=600)
        ids, total = covered(pipe, lm_ids)
        assert ids == whole._order(0)[:600].tolist() and total == 600
    last = lm_pass(lm_config, 61).get_batch(n // 61)
    real = last['example_mask'] > 0
    assert (~real).any()  # the padding rows copy the last real window, token for token
    np.testing.assert_array_equal(last['inputs'][~real][0], last['inputs'][real][-1])
    np.testing.assert_array_equal(last['mask'][~real][0], last['mask'][real][-1])


def test_lm_one_pass_batches_are_the_seed0_stream_when_the_batch_divides(lm_config):
    """num_examples = k * batch: batches 0..k-1 of the endless seed-0 stream, plus the mask."""
    pipe = lm_pass(lm_config, 16, num_examples=48)
    stream = data.build_pipeline(lm_config, split='validation', batch_size=16, seed=0)
    for i in range(3):
        got, want = pipe.get_batch(i), stream.get_batch(i)
        assert set(got) == set(want) | {'example_mask'} and got['example_mask'].all()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_lm_one_pass_two_processes_and_documents(lm_config):
    n = lm_pass(lm_config, 8).num_examples
    ids, total = covered(None, lm_ids, process_count=2,
                         build=lambda p: lm_pass(lm_config, 10, process_index=p, process_count=2))
    assert sorted(ids) == list(range(n)) and total == n
    docs = ml_collections.ConfigDict(dict(lm_config.to_dict(), pack=False, seq_len=64))
    pipe = lm_pass(docs, 12)
    assert pipe.num_examples == len(pipe.corpus.doc_ids)  # pack=False: the documents
    ids, total = covered(pipe, lm_ids)
    assert sorted(ids) == list(range(pipe.num_examples)) and total == pipe.num_examples
    with pytest.raises(ConfigError, match=f'num_examples={n + 1}: .* has only {n} sequences'):
        lm_pass(lm_config, 8, num_examples=n + 1)


# ------------------------------------------------------------------ examples held in memory


def synthetic_examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 200, rng.integers(2, 9)).astype(np.int32),
             np.append(rng.integers(1, 200, rng.integers(1, 6)), 0).astype(np.int32))
            for _ in range(n)]


class _Bytes:
    eos_id = 0


@pytest.mark.parametrize('pack', [True, False])
def test_conditional_one_pass_each_example_once(pack):
    examples = synthetic_examples(23)
    refs = [f'r{k}' for k in range(23)]

    def build(p, procs=1, batch=4, n=0):
        return conditional.ConditionalPipeline(
            examples, refs, tokenizer=_Bytes(), seq_len=16, pack=pack, batch_size=batch,
            seed=0, process_index=p, process_count=procs, one_pass=True, num_examples=n,
            split='validation')

    def ids(pipe, i):
        groups = pipe.row_groups(i)
        assert all(len(g) == 1 for g in groups)  # one example per row, packed or not
        return [g[0] for g in groups]

    for procs, batch in ((1, 4), (1, 5), (2, 6)):
        ids_seen, total = covered(None, ids, process_count=procs,
                                  build=lambda p, procs=procs, batch=batch: build(p, procs, batch))
        assert sorted(ids_seen) == list(range(23)) and total == 23
    batch = build(0).get_batch(5)  # rows 20..23: three real, one padding
    np.testing.assert_array_equal(batch['example_mask'], [1, 1, 1, 0])
    if pack:
        assert set(np.unique(batch['segment_ids'])) <= {0, 1}
    assert build(0, n=10).num_batches == 3
    pipe = seq2seq.Seq2SeqPipeline(examples, refs, target_len=8, decoder_start_id=0,
                                   tokenizer=_Bytes(), seq_len=16, batch_size=4, seed=0,
                                   one_pass=True, split='validation')
    assert pipe.num_examples == 23 and 'enc_tokens' in pipe.get_batch(5)
    np.testing.assert_array_equal(pipe.get_batch(5)['example_mask'], [1, 1, 1, 0])
    # the generated-text evaluator's prompts: n distinct examples, 0 = all, no more
    assert len({r for _, r in build(0).generation_examples(0)}) == 23
    assert len({r for _, r in build(0).generation_examples(9)}) == 9
    with pytest.raises(one_pass.NumExamplesError, match='num_examples=24'):
        build(0).generation_examples(24)


def test_snippet_one_pass_is_a_fixed_set_at_every_batch_size():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 255, rng.integers(5, 60)).astype(np.uint8) for _ in range(12)]
    labels = np.arange(12) % 3

    def build(batch, n, p=0, procs=1):
        return SnippetPipeline(docs, labels, ('a', 'b', 'c'), seq_len=8, batch_size=batch,
                               seed=0, process_index=p, process_count=procs, one_pass=True,
                               num_examples=n, split='validation')

    def rows(pipe):
        out = [pipe.get_batch(i) for i in range(pipe.num_batches)]
        keep = np.concatenate([b['example_mask'] for b in out]) > 0
        return {k: np.concatenate([b[k] for b in out])[keep] for k in ('inputs', 'label')}

    a, b = rows(build(4, 10)), rows(build(7, 10))
    assert len(a['label']) == 10
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    two = [rows(build(4, 10, p, 2)) for p in (0, 1)]
    assert sum(len(t['label']) for t in two) == 10
    with pytest.raises(one_pass.NumExamplesError, match='num_examples=0: .*without end'):
        build(4, 0)


def test_feature_pipeline_one_pass():
    feats = np.arange(30, dtype=np.float32).reshape(10, 3)
    pipe = features.FeaturePipeline(feats, np.arange(10, dtype=np.int32), batch_size=4,
                                    seed=0, process_index=0, process_count=1, one_pass=True)
    ids, total = covered(pipe, lambda p, i: p.get_batch(i)['label'])
    assert sorted(ids) == list(range(10)) and total == 10


# ------------------------------------------------------------------ classification on digits


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('digits'))
    data.prepare(ml_collections.ConfigDict(dict(pipeline='views', name='digits',
                                                data_dir=path)))
    return path


def digits_setup(digits_dir, workdir, folds_section=None, **evals):
    config = config_lib.load(f'{IMAGE}:mode=full,steps=1,batch=32')
    config.model.backbone.update(TINY_CNN)
    config.data.data_dir = digits_dir
    config.data.folds.update(folds_section or {})
    config.evals.val.update(dict(dict(batch_size=48), **evals))
    config = config.to_dict()
    config['optimizer']['warmup_steps'] = 0  # its only 'auto' key
    return run_lib.setup(ml_collections.ConfigDict(config), str(workdir))


def evaluate(s):
    params = s.init().params
    with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):  # as in training
        return params, s.evaluators['val'][1].run(params)


def test_digits_test_split_scored_once(digits_dir, tmp_path):
    s = digits_setup(digits_dir, tmp_path)
    params, metrics = evaluate(s)
    assert metrics['val/num_examples'] == 359  # 7 batches of 48 + 23 (25 padding rows)
    k = metrics['val/accuracy'] * 359
    assert abs(k - round(k)) < 1e-9
    saved = json.loads((tmp_path / 'confusion_val.json').read_text())
    cm = np.asarray(saved['matrix'])
    assert cm.sum() == 359 and np.trace(cm) == round(k)
    # the same matrix from the whole split predicted directly, row by row
    split = image_sources.load_split(s.eval_context.config.data, 'test', ('image', 'label'))
    rows = split.read(np.arange(len(split)))
    images = rows['image'].astype(np.float32) / 255.0 * 2.0 - 1.0
    preds = np.asarray(s.model.apply({'params': params}, images, train=False)).argmax(-1)
    np.testing.assert_array_equal(cm, classification.confusion_matrix(rows['label'], preds, 10))


def test_digits_fold_scores_the_fold_size(digits_dir, tmp_path):
    """As sweep.kfold(5) runs it: fold 3 of 5 of the training digits (287 examples)."""
    s = digits_setup(digits_dir, tmp_path, dict(k=5, index=3, seed=0, stratify=True),
                     split='fold', batch_size=96)
    stored = ml_collections.ConfigDict(dict(s.eval_context.config.data.to_dict(), folds={}))
    labels = image_sources.load_split(stored, 'train', ('label',)).read(np.arange(1438))
    size = len(folds.fold_indices(labels['label'], 5, 0)[3])
    assert size == 287  # 3 batches of 96 read 288 rows before
    _, metrics = evaluate(s)
    assert metrics['val/num_examples'] == size
    k = metrics['val/accuracy'] * size
    assert abs(k - round(k)) < 1e-9


def test_digits_num_examples_too_large_names_the_key(digits_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^evals\.val\.num_examples=360: split 'test' has "
                                          'only 359 examples'):
        digits_setup(digits_dir, tmp_path, num_examples=360)
    with pytest.raises(ConfigError, match=r'^evals\.val\.num_examples=-2'):
        digits_setup(digits_dir, tmp_path, num_examples=-2)
    s = digits_setup(digits_dir, tmp_path, num_examples=100)
    assert evaluate(s)[1]['val/num_examples'] == 100


def test_split_embedder_and_run_rows_see_each_row_once(digits_dir, tmp_path):
    """The representation evaluators' SplitEmbedder reads the same one pass (the seed-0
    order's first max_examples, 0 = all); run_rows pads with copies and drops them."""
    from jaxbig.evals.embedding import SplitEmbedder, plain_data_config, run_rows

    s = digits_setup(digits_dir, tmp_path)
    ctx, params = s.eval_context, s.init().params
    cfg = plain_data_config(ctx.config.data)
    split = image_sources.load_split(cfg, 'test', ('image', 'label'))
    order = image_sources.IndexOrder(len(split), 0)._order(0)
    labels = split.read(np.arange(len(split)))['label']
    for cap, n in ((0, 359), (100, 100), (10**6, 359)):  # max_examples caps, never demands
        emb = SplitEmbedder(ctx, cfg, split='test', batch_size=48, method='features',
                            input_key='image', max_examples=cap)
        with jax.set_mesh(s.mesh), nn.logical_axis_rules(s.rules):
            out, got = emb(params)
        assert out.shape[0] == n and emb.n == n
        np.testing.assert_array_equal(got, labels[order[:n]])
    rows = np.arange(13, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    with jax.set_mesh(s.mesh):
        out = run_rows(ctx, lambda p, x: x * 2, None, rows, 4)
    np.testing.assert_array_equal(out, rows * 2)


# ------------------------------------------------------------------ scikit-learn's averages


@pytest.mark.parametrize('seed', range(6))
def test_scores_match_sklearn_macro_and_weighted(seed):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    k = 7
    labels = rng.choice([0, 1, 2, 4, 6], 80)  # 3 and 5 never true
    preds = np.where(rng.uniform(size=80) < 0.5, labels, rng.choice([0, 1, 3, 4], 80))
    # 2 and 6 never predicted (except by a correct guess: removed below), 3 predicted only
    preds[np.isin(preds, [2, 6])] = 1
    s = classification.scores(classification.confusion_matrix(labels, preds, k))
    assert s['accuracy'] == pytest.approx(accuracy_score(labels, preds))
    for average in ('macro', 'weighted'):
        p, r, f, _ = precision_recall_fscore_support(labels, preds, average=average,
                                                     zero_division=0)
        np.testing.assert_allclose(
            [s[f'{average}_precision'], s[f'{average}_recall'], s[f'{average}_f1']],
            [p, r, f], rtol=1e-12, atol=1e-15)
