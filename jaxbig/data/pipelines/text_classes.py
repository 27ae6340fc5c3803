"""Embedded downstream text task: which top-level standard-library package does a snippet
of source come from? (`data.pipeline='text_classes'`, built on the `pystdlib` TFDS dataset.)

Classes are the top-level packages with at least `data.min_files` files in *each* split, so
validation snippets always come from files never seen in training (the split is pystdlib's
stable hash of the file path). Example `(i, row)` of global batch `i` is drawn from an rng
seeded by (seed, i, row): a class uniformly (balanced), a file of that class, and a window
of `seq_len` bytes of it. So batch `i` is a pure function of (seed, i), like every pipeline.
The snippets never run out, so a one pass (`one_pass=True`, for evaluators;
`jaxbig.data.one_pass`) scores a fixed set of `num_examples` (> 0) of them: snippet j is the
one row j of batch 0 draws (rng seeded by (seed, 0, j)), the same at every batch size.

With `data.folds` on (`jaxbig.data.folds`), the training files are divided into k folds
stratified by package: 'train' samples the files outside fold `index`, 'fold' the files in
it (a class with no file in a part is not drawn there).

Batch: inputs int32[b, T] (bytes), mask float32[b, T] (1 = real byte), label int32[b].

Any other `data.name` is a prepared TFDS text classification dataset (imdb_reviews: `text`
+ `label`; ag_news_subset: `description`, `title` + `label`; ...): `ExamplePipeline` reads
its examples in seeded-shuffle epochs (`image_sources.IndexOrder`, so batch i is a pure
function of (seed, i) too), each example's text truncated to `seq_len` tokens (bytes, or
`data.tokenizer`'s ids) and right-padded (mask 0), labelled by its `ClassLabel` feature,
whose names are the classes (`one_pass=True`: each example of the split once).
`data.text_key` ('' = the feature `text` if there is one, else every Text feature, in the
features' order, joined by a newline; or names joined by ',') and `data.label_key` ('' =
the only ClassLabel feature) choose the features. The evaluation split is found among the
dataset's (`tfds_sources.find_split`: 'test' for 'validation').

`data.name='files'`: JSONL / Parquet records at `data.path` with `data.text_key` ('text')
and `data.label_key` ('label': strings or integers; the classes are the values found, sorted),
split by `data.splits` as for text corpora, batched as the TFDS examples are. Each process
holds the labels (one checked pass over the records, saved beside the token cache:
jaxbig.data.text.record_labels) and reads only its rows' tokens from the split's token
cache (built once by `prepare`, as for LM text). `data.name='hf_disk'`: the same from a
dataset saved with `save_to_disk` (a DatasetDict's own splits, or a Dataset split by
data.splits).
"""

from __future__ import annotations

import functools

import numpy as np

from jaxbig.config import ConfigError
from jaxbig.data import folds, image_sources
from jaxbig.data import one_pass as one_pass_lib
from jaxbig.data.pipelines import lm
from jaxbig.data.text import documents, record_labels
from jaxbig.data.text.tokenizers import ByteTokenizer

RECORD_SOURCES = ('files', 'hf_disk')  # JSONL / Parquet records; a save_to_disk dataset


def prepare(config) -> None:
    if config.get('name') in RECORD_SOURCES:
        splits = file_labels(config)[0]  # every record checked before anything is written
        for split in dict.fromkeys((config.get('train_split', 'train'),
                                    config.get('val_split', 'validation'))):
            if split in splits:
                _files_corpus(config, split)
        record_labels.load(config)  # the labels saved beside the token caches now
        return
    if _from_tfds(config):
        image_sources.prepare(config)  # a prepared TFDS dataset (array_record): checked
    else:
        lm.prepare(config)


def _from_tfds(config) -> bool:
    return config.get('name', 'pystdlib') not in ('pystdlib', *RECORD_SOURCES)


def num_classes(config) -> int:
    """Classes of the task (`model.num_classes='auto'`): the ClassLabel's, the labels found
    in the files, or the snippets'."""
    if config.get('name') in RECORD_SOURCES:
        return len(file_labels(config)[1])
    if _from_tfds(config):
        return len(tfds_features(config)[2])
    return len(load_files(documents.resolve_data_dir(config.get('data_dir', '')),
                          config.get('min_files', 2))[1])


def tfds_features(config) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """(text feature names, label feature name, class names) of a TFDS dataset (see the
    module docstring for `data.text_key` / `data.label_key`); one-line ConfigError if the
    dataset has no such features."""
    import tensorflow_datasets as tfds

    features = image_sources.builder(config).info.features
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    where = f'data.name={config.name!r} (Text features {texts}, ClassLabel features {labels})'
    text_key = config.get('text_key', '')
    keys = tuple(text_key.split(',')) if text_key else (
        ('text',) if 'text' in texts else tuple(texts))
    if not keys or any(k not in texts for k in keys):
        raise ConfigError(f'data.text_key={text_key!r}: expected Text features of {where}')
    label_key = config.get('label_key', '') or (labels[0] if len(labels) == 1 else '')
    if label_key not in labels:
        raise ConfigError(f'data.label_key={config.get("label_key", "")!r}: expected a '
                          f'ClassLabel feature of {where}')
    return keys, label_key, tuple(features[label_key].names)


@functools.lru_cache(maxsize=4)
def load_files(data_dir: str, min_files: int, tokenizer: str = 'bytes', eos_id: int = -1):
    """{split: (docs list[uint8[n] bytes, or int32[n] ids of `tokenizer`], labels int32[d])},
    class names — for both splits."""
    from jaxbig.data.text import tokenizers

    tok = None if tokenizer in ('bytes', 'byte') else tokenizers.from_config(
        {'tokenizer': tokenizer, 'eos_id': eos_id})
    builder = documents.EMBEDDED['pystdlib'](data_dir=data_dir)
    if not builder.is_prepared():
        raise ValueError(f"data.name='pystdlib': not prepared in {data_dir!r}; run prepare")
    by_split = {}
    for split in ('train', 'validation'):
        source = builder.as_data_source(split=split)
        items = [source[i] for i in range(len(source))]
        by_split[split] = [(_top_package(it['path']), it['text']) for it in items]
    counts = {s: {} for s in by_split}
    for split, items in by_split.items():
        for package, _ in items:
            if package:
                counts[split][package] = counts[split].get(package, 0) + 1
    classes = sorted(
        p
        for p in counts['train']
        if min(counts['train'][p], counts['validation'].get(p, 0)) >= min_files
    )
    if len(classes) < 2:
        raise ConfigError(
            f'data.min_files={min_files}: fewer than 2 packages have that many files in both splits'
        )
    index = {c: k for k, c in enumerate(classes)}
    out = {}
    for split, items in by_split.items():
        docs, labels = [], []
        for package, text in items:
            body = text.encode('utf-8') if isinstance(text, str) else bytes(text)
            if package in index and body:
                docs.append(np.frombuffer(body, np.uint8) if tok is None
                            else tok.encode(body.decode('utf-8', errors='replace')))
                labels.append(index[package])
        out[split] = (docs, np.asarray(labels, np.int32))
    return out, tuple(classes)


def _top_package(path) -> str:
    path = path.decode() if isinstance(path, bytes) else str(path)
    return path.split('/')[0] if '/' in path else ''


class SnippetPipeline:
    """Snippets drawn without end (see the module docstring); with `one_pass` (evaluators) a
    fixed set of `num_examples` snippets instead: snippet j is the one the stream draws for
    batch 0, row j (rng seeded by (seed, 0, j); evaluators use seed 0), whatever the batch
    size; it needs `num_examples` > 0 (the stream has no end to count to)."""

    def __init__(
        self, docs, labels, classes, *, seq_len, batch_size, seed, process_index, process_count,
        one_pass=False, num_examples=0, split='',
    ):
        if batch_size % process_count:
            raise ConfigError(
                f'train.batch_size={batch_size} is not divisible by the {process_count} processes'
            )
        if one_pass and not num_examples:
            raise one_pass_lib.NumExamplesError(
                f'num_examples=0: the text_classes snippets of {split!r} are drawn without end; '
                'set how many to score (a fixed set drawn from the seed, e.g. 1024)')
        self.docs, self.labels, self.classes = docs, labels, classes
        self.by_class = [np.flatnonzero(labels == k) for k in range(len(classes))]
        self.drawn = [k for k, rows in enumerate(self.by_class) if len(rows)]  # classes present
        self.seq_len, self.seed = seq_len, seed
        self.batch_size = batch_size // process_count
        self.first_row = process_index * self.batch_size
        self.num_classes = len(classes)
        self.tokenizer = ByteTokenizer()
        self.one_pass = one_pass_lib.plan(
            one_pass, num_examples, num_examples, split=split, batch_size=batch_size,
            process_index=process_index, process_count=process_count, what='snippets')
        one_pass_lib.attach(self, self.one_pass)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        if self.one_pass is None:
            seeds = [(self.seed, i, self.first_row + r) for r in range(self.batch_size)]
            example_mask = None
        else:
            positions, example_mask = self.one_pass.rows(i)
            seeds = [(self.seed, 0, int(j)) for j in positions]
        b, t = self.batch_size, self.seq_len
        inputs = np.zeros((b, t), np.int32)
        mask = np.zeros((b, t), np.float32)
        label = np.zeros((b,), np.int32)
        for r, seed in enumerate(seeds):
            rng = np.random.default_rng(list(seed))
            k = self.drawn[int(rng.integers(len(self.drawn)))]  # = rng.integers(K) if all are
            doc = self.docs[int(rng.choice(self.by_class[k]))]
            start = int(rng.integers(max(len(doc) - t, 0) + 1))
            window = doc[start : start + t]
            inputs[r, : len(window)] = window
            mask[r, : len(window)] = 1.0
            label[r] = k
        return one_pass_lib.with_mask({'inputs': inputs, 'mask': mask, 'label': label},
                                      example_mask)


class ExamplePipeline:
    """A TFDS text classification split (see the module docstring): get_batch(i) ->
    inputs int32[b, T], mask float32[b, T], label int32[b]; `classes`: the label names."""

    def __init__(self, config, *, split, batch_size, seed, process_index, process_count,
                 one_pass=False, num_examples=0):
        from jaxbig.data.text import tokenizers

        self.text_keys, label_key, self.classes = tfds_features(config)
        self.num_classes = len(self.classes)
        self.split = image_sources.load_split(config, split, (*self.text_keys, label_key))
        self.label_key, self.seq_len = label_key, config.seq_len
        self.tokenizer = tokenizers.from_config(config)
        self.rows = image_sources.ExampleRows(
            len(self.split), batch_size=batch_size, seed=seed, process_index=process_index,
            process_count=process_count, one_pass=one_pass, num_examples=num_examples,
            split=split)
        self.order = self.rows.order
        one_pass_lib.attach(self, self.rows.one_pass)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        rows, ids, example_mask = self.rows.batch(i)
        columns = self.split.read(ids)
        b, t = len(rows), self.seq_len
        inputs, mask = np.zeros((b, t), np.int32), np.zeros((b, t), np.float32)
        for r in range(b):
            text = '\n'.join(str(columns[k][r]) for k in self.text_keys)
            ids = self.tokenizer.encode(text)[:t] if text else np.zeros(1, np.int32)  # eos
            inputs[r, : len(ids)], mask[r, : len(ids)] = ids, 1.0
        return one_pass_lib.with_mask({'inputs': inputs, 'mask': mask,
                                       'label': columns[self.label_key].astype(np.int32)},
                                      example_mask)


def file_labels(config) -> tuple[dict, tuple]:
    """({split: labels int32[n]}, classes) of a 'files' or 'hf_disk' source: every record's
    `data.label_key` checked and indexed once (jaxbig.data.text.record_labels)."""
    return record_labels.load(config)


class FileExamplePipeline:
    """A split of a 'files' / 'hf_disk' source (see the module docstring): get_batch(i) ->
    inputs int32[b, T], mask float32[b, T], label int32[b], in seeded-shuffle epochs as
    ExamplePipeline's. The labels are held; the text of this host's rows is read from the
    split's token cache (memory-mapped: the pages of its rows), each record's tokens cut to
    `seq_len` (an empty text is one eos token)."""

    def __init__(self, config, *, split, batch_size, seed, process_index, process_count,
                 one_pass=False, num_examples=0):
        by_split, self.classes = file_labels(config)
        if split not in by_split:
            raise ConfigError(f'data split {split!r}: data.splits defines {sorted(by_split)}')
        self.labels = by_split[split]
        self.num_classes, self.seq_len = len(self.classes), config.seq_len
        self.corpus = _files_corpus(config, split)
        self.rows = image_sources.ExampleRows(
            len(self.labels), batch_size=batch_size, seed=seed, process_index=process_index,
            process_count=process_count, one_pass=one_pass, num_examples=num_examples,
            split=split)
        one_pass_lib.attach(self, self.rows.one_pass)

    def get_batch(self, i: int) -> dict[str, np.ndarray]:
        rows, ids, example_mask = self.rows.batch(i)
        b, t = len(rows), self.seq_len
        inputs, mask = np.zeros((b, t), np.int32), np.zeros((b, t), np.float32)
        docs = self.corpus.documents(ids)
        for r, j in enumerate(ids.tolist()):
            tokens = docs[j][:-1][:t] if len(docs[j]) else np.zeros(1, np.int32)  # eos
            inputs[r, :len(tokens)], mask[r, :len(tokens)] = tokens, 1.0
        return one_pass_lib.with_mask({'inputs': inputs, 'mask': mask,
                                       'label': self.labels[ids].astype(np.int32)}, example_mask)


def _files_corpus(config, split: str):
    """The split's records as a token cache (`data.text_key`'s text, `data.tokenizer`)."""
    try:
        return lm._files_corpus(config, split)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_pipeline(config, *, split, batch_size, seed, process_index=0, process_count=1,
                   one_pass=False, num_examples=0):
    if config.seq_len < 1:
        raise ConfigError(f'data.seq_len={config.seq_len}: must be >= 1')
    if config.get('name') in RECORD_SOURCES:
        return FileExamplePipeline(config, split=split, batch_size=batch_size, seed=seed,
                                   process_index=process_index, process_count=process_count,
                                   one_pass=one_pass, num_examples=num_examples)
    if _from_tfds(config):
        if batch_size % process_count:
            raise ConfigError(f'train.batch_size={batch_size} is not divisible by the '
                              f'{process_count} processes')
        return ExamplePipeline(config, split=split, batch_size=batch_size, seed=seed,
                               process_index=process_index, process_count=process_count,
                               one_pass=one_pass, num_examples=num_examples)
    files, classes = load_files(
        documents.resolve_data_dir(config.get('data_dir', '')), config.get('min_files', 2),
        config.get('tokenizer', 'bytes'), config.get('eos_id', -1),
    )
    fold = folds.selects(config, split)
    if folds.source_split(config, split) not in files:
        raise ConfigError(f"data split {split!r}: text_classes has 'train' and 'validation'"
                          + (f" (and {folds.FOLD_SPLIT!r}: the held-out fold)"
                             if folds.settings(config) else ''))
    docs, labels = files[folds.source_split(config, split)]
    if fold:
        rows = folds.select(config, split, labels)
        docs, labels = [docs[r] for r in rows], labels[rows]
    return SnippetPipeline(
        docs,
        labels,
        classes,
        seq_len=config.seq_len,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        one_pass=one_pass,
        num_examples=num_examples,
        split=split,
    )
