"""A labelled fraction of the training split (`data.label_fraction`, jaxbig.data.label_subset):

* the row arithmetic against a NumPy count per class: max(1, round(f * n_c)) rows of every
  class, no row twice, nested across fractions for one seed, deterministic in the seed;
* at the pipeline level on digits: the training pipeline yields exactly the kept rows, the
  held-out split is read whole, folds and a fraction compose (the kept rows lie inside the
  fold's training rows), features mode embeds only the kept rows;
* experiments/finetune_image.py's `labels` / `label_seed` arguments, and the one-line
  errors for a fraction outside (0, 1], a non-integer seed, a dataset without labels.
"""
import os
from collections import Counter

import ml_collections
import numpy as np
import pytest
from conftest import REPO

from jaxbig import config as config_lib
from jaxbig import data
from jaxbig.config import ConfigError
from jaxbig.data import image_sources, label_subset

IMAGE = os.path.join(REPO, 'experiments', 'finetune_image.py')


def _labels(n=1000, classes=7, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize('fraction', [0.001, 0.01, 0.1, 0.37, 1.0])
def test_rows_per_class_match_numpy(fraction):
    labels = _labels()
    rows = label_subset.labelled_rows(labels, fraction, seed=4)
    assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)  # sorted, no row twice
    got = Counter(labels[rows].tolist())
    for c in range(7):
        n_c = int(np.sum(labels == c))
        assert got[c] == min(n_c, max(1, int(np.round(fraction * n_c)))), c


def test_nested_and_seeded():
    labels = _labels()
    small, large = (set(label_subset.labelled_rows(labels, f, seed=1).tolist())
                    for f in (0.05, 0.2))
    assert small < large
    again = label_subset.labelled_rows(labels, 0.05, seed=1)
    assert sorted(small) == again.tolist()
    other = set(label_subset.labelled_rows(labels, 0.05, seed=2).tolist())
    assert other != small and len(other) == len(small)


def test_settings_off_and_errors():
    assert label_subset.settings(ml_collections.ConfigDict({})) is None
    assert label_subset.settings(ml_collections.ConfigDict({'label_fraction': 1.0})) is None
    assert label_subset.settings({'label_fraction': 0.1, 'label_seed': 3}) == (0.1, 3)
    for bad in (0.0, -0.1, 1.5, True, 'half'):
        with pytest.raises(ConfigError, match='label_fraction'):
            label_subset.settings({'label_fraction': bad})
    with pytest.raises(ConfigError, match='label_seed'):
        label_subset.settings({'label_fraction': 0.5, 'label_seed': 0.5})
    with pytest.raises(ValueError, match='fraction'):
        label_subset.labelled_rows(np.zeros(3, int), 0.0)


# ------------------------------------------------------------------ pipelines on digits

@pytest.fixture(scope='module')
def digits(tfds_dir):
    config = config_lib.load(f'{IMAGE}:batch=32')
    data.prepare(config.data)
    return config.data


def _with(config, **changes):
    c = ml_collections.ConfigDict(config.to_dict())
    c.update(changes)
    return c


def _all_labels(config, split='train'):
    whole = image_sources.load_split(_with(config, label_fraction=1.0), split, ('label',))
    return whole.read(np.arange(len(whole)))['label']


def test_pipeline_yields_exactly_the_kept_rows(digits):
    config = _with(digits, label_fraction=0.1, label_seed=5)
    pipe = data.build_pipeline(config, split='train', batch_size=32, seed=0)
    labels = _all_labels(digits)
    kept = label_subset.labelled_rows(labels, 0.1, 5)
    assert len(pipe.split) == len(kept) < len(labels) // 5
    n = len(kept)
    whole = image_sources.load_split(digits, 'train', ('image',))
    want = Counter(map(bytes, whole.read(kept)['image'].reshape(n, -1)))
    batches = [pipe.get_batch(i) for i in range(-(-n // 32))]
    images = (np.concatenate([b['image'] for b in batches])[:n] + 1.0) * 127.5
    got = Counter(map(bytes, np.round(images).astype(np.uint8).reshape(n, -1)))
    assert got == want  # one epoch: each kept row once, nothing else
    test = data.build_pipeline(config, split='test', batch_size=32, seed=0)
    assert len(test.split) == len(_all_labels(digits, 'test'))  # evaluation split whole


def test_folds_then_fraction(digits):
    config = _with(digits, label_fraction=0.2, label_seed=1)
    config.folds.update(k=3, index=1)
    part = image_sources.load_split(config, 'train', ('label',))
    fold_train = image_sources.load_split(_with(config, label_fraction=1.0), 'train', ('label',))
    assert set(part.ids.tolist()) < set(fold_train.ids.tolist())
    fold_labels = fold_train.read(np.arange(len(fold_train)))['label']
    want = label_subset.labelled_rows(fold_labels, 0.2, 1)
    np.testing.assert_array_equal(part.ids, fold_train.ids[want])
    held_out = image_sources.load_split(config, 'fold', ('label',))
    assert len(held_out) == len(image_sources.load_split(_with(config, label_fraction=1.0),
                                                         'fold', ('label',)))


def test_no_labels_is_a_one_line_error(digits):
    config = _with(digits, label_fraction=0.5, label_key='')
    with pytest.raises(ConfigError, match='label_key is empty'):
        image_sources.load_split(config, 'train', ('image',))


# ------------------------------------------------------------------ the experiment's arguments

def test_finetune_image_labels_argument(tmp_path):
    c = config_lib.load(f'{IMAGE}:mode=full,labels=0.01,label_seed=2')
    assert (c.data.label_fraction, c.data.label_seed) == (0.01, 2)
    assert config_lib.load(IMAGE).data.label_fraction == 1.0
    for bad in ('labels=0', 'labels=2'):
        with pytest.raises(ConfigError, match='labels.label_fraction'):
            config_lib.load(f'{IMAGE}:{bad}')
    with pytest.raises(ConfigError, match='label_seed'):
        config_lib.load(f'{IMAGE}:labels=0.5,label_seed=0.5')


def test_features_mode_embeds_only_the_kept_rows(digits, tmp_path):
    """features mode reads its source through the same pipeline: the stored features are
    those of the kept rows (a random-init backbone workdir is enough to embed with)."""
    from conftest import run_cli

    backbone = str(tmp_path / 'cnn')
    run_cli('train', '--config', 'experiments/simclr.py:data=digits,backbone=cnn,width=4,'
            'steps=1,batch=16', '--workdir', backbone, '--config.train.eval_every=0')
    c = config_lib.load(f'{IMAGE}:mode=features,init={backbone},labels=0.05,label_seed=3')
    c.data.source.data_dir = digits.data_dir
    pipe = data.build_pipeline(c.data, split='train', batch_size=8, seed=0)
    kept = label_subset.labelled_rows(_all_labels(digits), 0.05, 3)
    assert len(pipe.labels) == len(kept)
    np.testing.assert_array_equal(np.sort(pipe.labels), np.sort(_all_labels(digits)[kept]))
