"""k-fold cross-validation folds of a training split (`data.folds`), pure numpy.

    data.folds = dict(k=0, index=0, seed=0, stratify=True)     # defaults.folds(); k=0: off

With k >= 2 the stored training split (`data.train_split`) is cut into k disjoint folds
(`fold_indices`): the pipeline's training split becomes every row outside fold `index`, and
the split name FOLD_SPLIT ('fold') reads fold `index` itself, for the evaluators
(`evals.<name>.split='fold'`; `jaxbig.sweep.kfold` sets both). Other splits (a held-out
test split) are untouched. Stratified (the default, for labelled data): within every class
the fold counts differ by at most one, and so do the fold sizes, as in scikit-learn's
StratifiedKFold; unstratified, fold sizes differ by at most one. The assignment is a pure
function of (labels or n, k, seed): the same in every process and every launch.

Pipelines hook in where they select a split's rows: `if folds.selects(config, split):
rows = folds.select(config, split, labels)` on the stored split `folds.source_split(config,
split)` (image datasets: `image_sources.load_split`; the text task: `text_classes`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxbig.config import ConfigError

FOLD_SPLIT = 'fold'  # the split name of the held-out fold


@dataclasses.dataclass(frozen=True)
class Folds:
    k: int
    index: int
    seed: int
    stratify: bool


def fold_indices(labels_or_n, k: int, seed: int = 0, stratify: bool = True) -> list[np.ndarray]:
    """k disjoint folds covering rows 0..n-1: a list of k sorted int64 arrays.

    labels_or_n: int labels [n] (stratify by them) or n (then `stratify` must be False).
    The rows are put in a seeded random order (stratified: stably sorted by label after it,
    so each class is one run of randomly ordered rows) and dealt out round-robin, row p of
    that order to fold p % k: fold sizes differ by at most one, and stratified so do each
    class's counts (the allocation of scikit-learn's StratifiedKFold).
    """
    if np.ndim(labels_or_n) == 0:
        n, labels = int(labels_or_n), None
        if stratify:
            raise ValueError('fold_indices: stratify=True needs labels, got a count')
    else:
        labels = np.asarray(labels_or_n)
        n = len(labels)
    if k < 2:
        raise ValueError(f'fold_indices: k={k}: needs at least 2 folds')
    if n < k:
        raise ValueError(f'fold_indices: {n} examples cannot fill {k} folds')
    order = np.random.default_rng(int(seed)).permutation(n)
    if stratify:
        order = order[np.argsort(labels[order], kind='stable')]
    fold_of = np.empty(n, np.int64)
    fold_of[order] = np.arange(n) % k
    return [np.flatnonzero(fold_of == f) for f in range(k)]


def settings(config, where: str = 'data.folds') -> Folds | None:
    """The data config's validated `folds` section, or None when off (absent or k=0)."""
    f = config.get('folds') if hasattr(config, 'get') else None
    if not f or f.get('k', 0) == 0:
        return None
    k, index = f.get('k'), f.get('index', 0)
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f'{where}.k={k!r}: expected >= 2 folds (0 = no folds); one fold '
                          'would leave nothing to train on')
    if not isinstance(index, int) or not 0 <= index < k:
        raise ConfigError(f'{where}.index={index!r}: expected 0 .. {k - 1} ({where}.k={k})')
    return Folds(k, index, int(f.get('seed', 0)), bool(f.get('stratify', True)))


def selects(config, split: str) -> bool:
    """Whether `split` is a part of the folded training split (else: read it whole).
    Asking for FOLD_SPLIT with folds off is a ConfigError."""
    on = settings(config) is not None
    if split == FOLD_SPLIT and not on:
        raise ConfigError(f"data split {FOLD_SPLIT!r} is the held-out fold of k-fold "
                          'cross-validation, but data.folds.k is 0 (off); set data.folds.k >= 2 '
                          '(sweep.kfold does) or evaluate another split')
    return on and split in (FOLD_SPLIT, config.get('train_split', 'train'))


def source_split(config, split: str) -> str:
    """The stored split that `split` reads rows of: FOLD_SPLIT -> data.train_split."""
    return config.get('train_split', 'train') if split == FOLD_SPLIT else split


def select(config, split: str, labels_or_n) -> np.ndarray:
    """Rows (sorted int64) of the stored training split that `split` keeps: fold `index`
    for FOLD_SPLIT, every other row for the training split. `labels_or_n`: the stored
    split's labels [n] (needed when stratify) or its size."""
    f = settings(config)
    if f.stratify and np.ndim(labels_or_n) == 0:
        raise ConfigError('data.folds.stratify=true needs labels, and this dataset has none '
                          '(e.g. data.label_key is empty); set data.folds.stratify=false')
    labels_or_n = labels_or_n if f.stratify or np.ndim(labels_or_n) == 0 else len(labels_or_n)
    try:
        folds = fold_indices(labels_or_n, f.k, f.seed, f.stratify)
    except ValueError as e:
        raise ConfigError(f'data.folds: {e}') from None
    if split == FOLD_SPLIT:
        return folds[f.index]
    return np.sort(np.concatenate([x for i, x in enumerate(folds) if i != f.index]))
