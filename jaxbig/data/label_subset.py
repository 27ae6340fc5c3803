"""A labelled fraction of a training split (`data.label_fraction`), for label-efficiency
experiments (SimCLR's 1 % / 10 % of the labels), pure numpy.

    data.label_fraction = 1.0     # 1.0 = every training row (off); 0.01 = 1 % of the labels
    data.label_seed = 0           # which rows are kept

The training split (`data.train_split`, after any `data.folds` selection) keeps, in every
class with n_c rows, k_c = max(1, round(fraction * n_c)) of them: the first k_c of a seeded
random order of that class. So the subset is stratified (every class keeps at least one
labelled example), a pure function of (labels, fraction, seed) — the same in every process
and every launch — and nested: with one seed, the rows kept at a fraction are a subset of
the rows kept at any larger fraction. Other splits (the held-out evaluation split) are
read whole.

Pipelines hook in where they select a split's rows: `if label_subset.selects(config, split):
rows = label_subset.labelled_rows(labels, *label_subset.settings(config))`
(image datasets: `image_sources.load_split`).
"""

from __future__ import annotations

import numpy as np

from jaxbig.config import ConfigError


def settings(config, where: str = 'data') -> tuple[float, int] | None:
    """(fraction, seed) of the data config, validated; None when off (absent or 1.0)."""
    fraction = config.get('label_fraction', 1.0) if hasattr(config, 'get') else 1.0
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0.0 < fraction <= 1.0):
        raise ConfigError(f'{where}.label_fraction={fraction!r}: expected a fraction of the '
                          'training labels in (0, 1] (1.0 = all of them)')
    seed = config.get('label_seed', 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f'{where}.label_seed={seed!r}: expected an integer')
    return None if fraction == 1.0 else (float(fraction), int(seed))


def selects(config, split: str) -> bool:
    """Whether `split` is the training split and only a fraction of its labels is used."""
    return settings(config) is not None and split == config.get('train_split', 'train')


def class_counts(labels: np.ndarray, fraction: float) -> dict[int, int]:
    """{class: rows kept}: max(1, round(fraction * n_c)) of each class's n_c rows."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(c): int(min(n, max(1, round(fraction * n)))) for c, n in zip(classes, counts)}


def labelled_rows(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Rows (sorted int64) of a split with int `labels` [n] kept at `fraction` (module
    docstring). Row r of class c is ranked by its position in one seeded permutation of
    0..n-1, so lowering the fraction only ever drops rows."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f'labelled_rows: expected a non-empty 1-D label array, got shape '
                         f'{labels.shape}')
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'labelled_rows: fraction={fraction!r} not in (0, 1]')
    rank = np.empty(len(labels), np.int64)
    rank[np.random.default_rng(int(seed)).permutation(len(labels))] = np.arange(len(labels))
    keep = []
    for c, k in class_counts(labels, fraction).items():
        rows = np.flatnonzero(labels == c)
        keep.append(rows[np.argsort(rank[rows], kind='stable')[:k]])
    return np.sort(np.concatenate(keep))
