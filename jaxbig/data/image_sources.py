"""Image datasets from TFDS, shared by the image pipelines (`views`, `image_text`).

    prepare(config)                 embedded builders (`digits`, `shapes`) are built into
                                    data.data_dir if needed; any other TFDS name (cifar10,
                                    imagenet2012, coco_captions, ...) must already be prepared
    load_split(config, split)       -> Split: the split's examples as in-memory numpy columns
                                    (a Subset of the training split's rows with data.folds
                                    or data.label_fraction)
    IndexOrder(n, seed)             global row g of the endless epoch stream -> example id
    ExampleRows(n, ...)             the example ids of a host's rows of batch i: that
                                    stream, or one pass (`jaxbig.data.one_pass`)

The embedded datasets are small (digits: 1.8 k x 64 B; shapes: 6 k x 3 KB by default), so
a split is read once and kept in memory (cached per process); a dataset too large for that
is read per batch with random access (`tfds.data_source`).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow_datasets as tfds

from jaxbig.config import ConfigError
from jaxbig.data import folds, label_subset, tfds_sources
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.builders import digits, shapes
from jaxbig.data.shuffle import epoch_permutation
from jaxbig.data.tfds_sources import resolve_data_dir

EMBEDDED = ('digits', 'shapes')
IN_MEMORY_BYTES = 512 * 2**20  # splits whose image column fits are kept in memory


def _shapes_config(config) -> shapes.ShapesConfig:
    return shapes.make_config(
        resolution=config.get('resolution', 32),
        num_train=config.get('num_train', 5000),
        num_test=config.get('num_test', 1000),
        seed=config.get('shapes_seed', 0),
    )


def builder(config):
    """The TFDS builder named by `config.name` in `config.data_dir` (not prepared here)."""
    name, data_dir = config.name, resolve_data_dir(config.get('data_dir', ''))
    if name == 'digits':
        return digits.Digits(data_dir=data_dir)
    if name == 'shapes':
        cfg = _shapes_config(config)
        known = {c.name for c in shapes.Shapes.BUILDER_CONFIGS}
        return shapes.Shapes(config=cfg.name if cfg.name in known else cfg, data_dir=data_dir)
    return tfds_sources.open_builder(name, data_dir)  # prepared, array_record


def prepare(config) -> None:
    """Idempotent: builds an embedded dataset if needed; checks any other is prepared."""
    b = builder(config)
    if config.name in EMBEDDED and not b.is_prepared():
        b.download_and_prepare(
            file_format='array_record',
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )


class Split:
    """One split's examples by id. `read(ids)` -> {key: numpy array [len(ids), ...]}.

    `info` is the builder's DatasetInfo (feature names, class names).
    """

    def __init__(self, source, info, keys: tuple[str, ...]):
        self.info, self.keys, self._source = info, keys, source
        self._columns = None
        n = len(source)
        if n == 0:
            raise ValueError('empty split')
        first = source[0]
        missing = [k for k in keys if _lookup(first, k) is None]
        if missing:
            raise ValueError(f'data keys {missing} not in dataset features {sorted(first)}')
        size = sum(np.asarray(_lookup(first, k)).nbytes for k in keys)
        if size * n <= IN_MEMORY_BYTES:
            self._columns = self._fetch(range(n))
        self.num_examples = n

    def _fetch(self, ids) -> dict[str, np.ndarray]:
        ids = [int(i) for i in ids]
        get = getattr(self._source, '__getitems__', None)
        items = get(ids) if get else [self._source[i] for i in ids]
        out = {}
        for k in self.keys:
            values = [_lookup(item, k) for item in items]
            if isinstance(values[0], (str, bytes)):
                out[k] = np.array([_text(v) for v in values], object)
            elif len({np.shape(v) for v in values}) == 1:
                out[k] = np.stack([np.asarray(v) for v in values])
            else:  # e.g. images of different sizes
                out[k] = np.empty(len(values), object)
                out[k][:] = [np.asarray(v) for v in values]
        return out

    def __len__(self) -> int:
        return self.num_examples

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        if self._columns is not None:
            return {k: v[ids] for k, v in self._columns.items()}
        return self._fetch(ids)


def _text(value) -> str:
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _lookup(item, key: str):
    """item['a/b'] = item['a']['b']; a sequence of texts (several captions) gives its
    first element. None if missing."""
    for part in key.split('/'):
        if not isinstance(item, dict) or part not in item:
            return None
        item = item[part]
    if isinstance(item, (list, tuple, np.ndarray)) and len(item) and isinstance(
        item[0], (str, bytes)
    ):
        return _text(item[0])
    return item


@functools.lru_cache(maxsize=16)
def _load_split(config_key: tuple, split: str, keys: tuple[str, ...]) -> Split:
    import ml_collections

    config = ml_collections.ConfigDict(dict(config_key))
    b = builder(config)
    if not b.is_prepared():
        raise ValueError(
            f'data.name={config.name!r}: not prepared in data_dir {b.data_dir!r}; '
            'call jaxbig.data.prepare(config) first'
        )
    source, _ = tfds_sources.data_source(b, split, config.name)  # 'test' for 'validation'...
    return Split(source, b.info, keys)


def load_split(config, split: str, keys: tuple[str, ...]):
    """`split` of the dataset named by `config` with columns `keys` (cached in-process): a
    Split, or a `Subset` of the stored split's rows where the config selects some.

    With `data.folds` on (`jaxbig.data.folds`), the training split is its rows outside the
    held-out fold and the split 'fold' is that fold, stratified by the `data.label_key`
    column; with `data.label_fraction` < 1 (`jaxbig.data.label_subset`) the training split
    (after the folds) keeps that fraction of each class's rows."""
    wanted = ('name', 'data_dir', 'resolution', 'num_train', 'num_test', 'shapes_seed')
    key = tuple((k, config[k]) for k in wanted if k in config)
    label_key = config.get('label_key', 'label')
    stored = folds.source_split(config, split) if folds.selects(config, split) else split
    whole = _load_split(key, stored, tuple(keys))
    rows = None  # the stored split's rows this split keeps (None: all of them)

    def labels_of(rows):  # the stored split's labels at `rows` (None: every row)
        column = _load_split(key, stored, (label_key,))
        return column.read(np.arange(len(column)) if rows is None else rows)[label_key]

    if folds.selects(config, split):
        stratify = label_key and folds.settings(config).stratify
        rows = folds.select(config, split, labels_of(None) if stratify else len(whole))
    if label_subset.selects(config, split):
        if not label_key:
            raise ConfigError('data.label_fraction < 1 keeps a fraction of each class, but '
                              'data.label_key is empty (this dataset has no labels)')
        kept = label_subset.labelled_rows(labels_of(rows), *label_subset.settings(config))
        rows = kept if rows is None else rows[kept]
    return whole if rows is None else Subset(whole, rows)


class Subset:
    """Rows `ids` (int [m]) of a Split as a split of m examples: `read(j)` reads
    `split.read(ids[j])`; `info` and `keys` are the split's."""

    def __init__(self, split: Split, ids: np.ndarray):
        self.split, self.ids = split, np.asarray(ids, np.int64)
        self.info, self.keys, self.num_examples = split.info, split.keys, len(self.ids)

    def __len__(self) -> int:
        return self.num_examples

    def read(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return self.split.read(self.ids[np.asarray(ids, np.int64)])


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class IndexOrder:
    """Global row g -> example id: epoch g // n visits all n examples in a seeded shuffle."""

    def __init__(self, num_examples: int, seed: int, *, shuffle: bool = True):
        self.n, self.seed, self.shuffle = num_examples, int(seed), shuffle
        self._orders = {}

    def _order(self, epoch: int):
        if epoch not in self._orders:
            if len(self._orders) >= 4:
                self._orders.clear()
            self._orders[epoch] = (  # grain.MapDataset.range(n).shuffle(seed)'s order
                epoch_permutation(self.n, _epoch_seed(self.seed, epoch))
                if self.shuffle
                else np.arange(self.n)
            )
        return self._orders[epoch]

    def ids(self, global_rows: np.ndarray) -> np.ndarray:
        epochs, within = np.divmod(np.asarray(global_rows, np.int64), self.n)
        out = np.empty(len(epochs), np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._order(int(e))[within[sel]]
        return out


def host_rows(i: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Global rows (positions in the example stream) of host `process_index`'s part of batch i."""
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f'batch_size={batch_size} must be a positive multiple of process_count={process_count}'
        )
    if i < 0:
        raise ValueError(f'batch index {i} must be >= 0')
    rows = batch_size // process_count
    start = i * batch_size + process_index * rows
    return np.arange(start, start + rows, dtype=np.int64)


class ExampleRows:
    """Which of a split's `num_available` examples the host rows of global batch i read: the
    endless seeded-shuffle stream (`IndexOrder`, `host_rows`), or with `one_pass` one pass
    over the first `num_examples` (0 = all) of its epoch 0 (`jaxbig.data.one_pass`; then
    `num_examples` and `num_batches` are set).

    batch(i) -> (global rows int64[b], example ids int64[b], example_mask float32[b] or None)
    """

    def __init__(self, num_available: int, *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, one_pass: bool = False, num_examples: int = 0,
                 split: str = ''):
        host_rows(0, batch_size, process_index, process_count)  # validates
        self.order = IndexOrder(num_available, seed)
        self.batch_size, self.process_index, self.process_count = (
            batch_size, process_index, process_count)
        self.one_pass = one_pass_lib.plan(
            one_pass, num_examples, num_available, split=split, batch_size=batch_size,
            process_index=process_index, process_count=process_count)
        one_pass_lib.attach(self, self.one_pass)

    def batch(self, i: int):
        if self.one_pass is None:
            rows = host_rows(i, self.batch_size, self.process_index, self.process_count)
            return rows, self.order.ids(rows), None
        positions, mask = self.one_pass.rows(i)
        return self.one_pass.global_rows(i), self.order.ids(positions), mask


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] (0..255) -> float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0
