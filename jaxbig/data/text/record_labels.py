"""The labels of a labelled records source, read once: the `data.label_key` value of every
record of a 'files' source (JSONL / Parquet: jaxbig.data.text.file_documents) or of a saved
dataset ('hf_disk': jaxbig.data.text.hf_disk), as int32 indices into the classes (every
value found in any split, sorted: integers before strings).

The one pass over the records that finds them also checks each record: a record without
its `data.text_key` or `data.label_key`, or with a label that is not a string or an
integer, is one line naming the file and line ('a.jsonl:3: ...', a Parquet file's row, a
saved dataset's 'dir[row]'). Only the labels are held (a JSONL line's text is parsed and
dropped), so text classification keeps labels in memory and reads its rows' text from the
token cache (jaxbig.data.text.token_cache), the pages of its own rows only.

A 'files' source's labels are saved (`jaxbig-labels.npz`, atomically) in its cache folder
once its token cache has been written there (so a refusal writes nothing), keyed by
the folder's own key (the files' names, sizes and mtimes, the text key) and the label key:
the next opening, and the processes after the first (process 0 prepares), read them back.
A saved dataset's label column is read from its memory-mapped Arrow table each time.

    load(config) -> ({split: int32[n] labels in the split's record order}, classes tuple)
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np

from jaxbig.config import ConfigError
from jaxbig.data.text import documents, file_records
from jaxbig.data.text import file_documents as fd

LABELS_FILE = 'jaxbig-labels.npz'


def keys(config) -> tuple[str, str]:
    """(text key, label key): data.text_key ('text') and data.label_key ('label')."""
    return config.get('text_key') or 'text', config.get('label_key') or 'label'


def load(config) -> tuple[dict[str, np.ndarray], tuple]:
    """({split: int32[n] label index of each of the split's records}, classes); one-line
    ConfigError on a bad record, a missing column or fewer than two classes."""
    try:
        if config.get('name') == 'hf_disk':
            return _indexed(config, _saved_labels(config))
        return _file_labels(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _indexed(config, values: dict[str, list]) -> tuple[dict[str, np.ndarray], tuple]:
    """({group: int32 indices into the classes}, classes: every value found, sorted)."""
    classes = tuple(sorted({v for group in values.values() for v in group},
                           key=lambda v: (isinstance(v, str), v)))
    if len(classes) < 2:
        raise ConfigError(f'data.label_key={keys(config)[1]!r}: {len(classes)} class(es) in '
                          f'{config.get("path")!r}; a classifier needs 2 or more')
    index = {c: k for k, c in enumerate(classes)}
    return {g: np.asarray([index[v] for v in group], np.int32) for g, group in values.items()
            }, classes


def _checked(record, where: str, text_key: str, label_key: str):
    """The record's label, after the checks the module docstring lists."""
    for which, key in (('text_key', text_key), ('label_key', label_key)):
        if not isinstance(record, dict) or key not in record:
            raise ValueError(f'{where}: no data.{which}={key!r}')
    label = record[label_key]
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise ValueError(f'{where}: the label {label!r} is not a string or an integer')
    return label


def _file_labels(config) -> tuple[dict[str, np.ndarray], tuple]:
    from jaxbig.data.text.file_documents import FileDocuments

    text_key, label_key = keys(config)
    path, splits = config.get('path', ''), config.get('splits', '')
    data_dir = documents.resolve_data_dir(config.get('data_dir', ''))
    by_split = {s: FileDocuments(path, s, text_key, splits, data_dir)
                for s in dict.fromkeys(file_records.split_names(config))}
    any_split = next(iter(by_split.values()))
    saved = os.path.join(any_split.cache_dir, LABELS_FILE)
    labels, classes = _read_saved(saved, label_key)
    if labels is None:
        root, rel = fd.find_files(path)
        labels, classes = _read_files(root, file_records.stamp(path), text_key, label_key,
                                      str(config.get('path')))
        if os.path.isdir(any_split.cache_dir):  # written by the token cache: save beside it
            _save(saved, label_key, labels, classes)
    return {s: labels[docs.ids] for s, docs in by_split.items()}, classes


@functools.lru_cache(maxsize=4)
def _read_files(root: str, files: tuple, text_key: str, label_key: str, path: str) -> tuple:
    """(labels int32[records], classes) of `files` (file_records.stamp's (relative path,
    size, mtime) of each): one pass, once per content in a process."""
    values = []
    for r, _, _ in files:
        values += _one_file(os.path.join(root, r), r, text_key, label_key)
    labels, classes = _indexed({'label_key': label_key, 'path': path}, {'all': values})
    return labels['all'], classes


def _one_file(path: str, rel: str, text_key: str, label_key: str) -> list:
    """The labels of one file's records, in order (a JSONL file's non-blank lines, a
    Parquet file's rows), each record checked."""
    with fd.unreadable_as_value_error(path):
        if path.endswith('.parquet'):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
            for key in (text_key, label_key):
                if key not in names:
                    raise ValueError(f'{path}: no column {key!r} (found {names}); set the '
                                     'data.*_key that names it')
            column = pq.read_table(path, columns=[label_key]).column(0).to_pylist()
            return [_checked({text_key: '', label_key: v}, f'{rel}:{n}', text_key, label_key)
                    for n, v in enumerate(column, 1)]
        out = []
        with fd._open_text(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    where = f'{rel}:{n}'
                    out.append(_checked(fd._loads(line, where), where, text_key, label_key))
        return out


def _read_saved(saved: str, label_key: str) -> tuple:
    """(labels int32[records], classes) saved for `label_key`, or (None, None)."""
    try:
        with np.load(saved, allow_pickle=False) as z:
            if str(z['label_key']) != label_key:
                return None, None
            return np.asarray(z['labels']), tuple(json.loads(str(z['classes'])))
    except (OSError, KeyError, ValueError):  # none yet, or unreadable: read again
        return None, None


def _save(saved: str, label_key: str, labels: np.ndarray, classes: tuple) -> None:
    arrays = dict(label_key=np.asarray(label_key), labels=labels,
                  classes=np.asarray(json.dumps(list(classes))))
    try:
        documents._atomic_write(saved, lambda f: np.savez(f, **arrays))
    except OSError as e:  # a read-only data dir: read again next time
        logging.warning('data: cannot save the labels %s (%s)', saved, e)


def _saved_labels(config) -> dict[str, list]:
    """{split: label values} of a saved dataset, each row checked (columns, label type)."""
    from jaxbig.data.text import hf_disk

    text_key, label_key = keys(config)
    path, splits = config.get('path', ''), config.get('splits', '')
    saved, out = hf_disk.load(path), {}
    for split in dict.fromkeys(file_records.split_names(config)):
        table, ids = hf_disk.open_split(saved, path, split, splits)
        for key in (text_key, label_key):
            if key not in table.column_names:
                raise ValueError(f'{path}: no column {key!r} (found {table.column_names}); '
                                 'set the data.*_key that names it')
        rows = ids.tolist()
        column = table.select_columns([label_key])[rows][label_key] if rows else []
        out[split] = [_checked({text_key: '', label_key: v}, f'{path}[{i}]', text_key,
                               label_key) for i, v in zip(rows, column)]
    return out
