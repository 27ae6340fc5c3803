"""Whole records of JSONL / Parquet files, for the pipelines whose examples are records
rather than a text stream: preference pairs (jaxbig/data/text/preference_files.py) and chat
conversations (jaxbig/data/pipelines/conditional.py). (Labelled text keeps only its labels:
jaxbig/data/text/record_labels.py, which shares `split_names` and `stamp`.)

The files and splits are those of the text corpora (jaxbig.data.text.file_documents:
`data.path` = a file, a directory or a glob; `data.splits` = a held-out fraction or file
globs); every record is read into memory (such sets are tens of thousands of records), each
located as 'file:line' (a Parquet file's 'file:row') for one-line errors. A damaged file
(truncated, not UTF-8) is one line naming it.
"""

from __future__ import annotations

import functools
import os

from jaxbig.config import ConfigError
from jaxbig.data.text import file_documents as fd


def read_file(path: str, keys: tuple) -> list[tuple[int, dict]]:
    """[(line or row number, record)] of one file (the `keys` columns of a Parquet file;
    JSONL's blank lines are skipped, and numbers are the file's own lines), in order."""
    with fd.unreadable_as_value_error(path):
        if path.endswith('.parquet'):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
            missing = [k for k in keys if k not in names]
            if missing:
                raise ValueError(f'{path}: no column {missing[0]!r} (found {names}); set the '
                                 'data.*_key that names it')
            return list(enumerate(pq.read_table(path, columns=list(keys)).to_pylist(), 1))
        with fd._open_text(path) as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    return [(n, fd._loads(line, f'{path}:{n}')) for n, line in lines]


def stamp(path: str) -> tuple:
    """((relative path, size, mtime ns), ...) of the files `path` names: what a cache of
    their records is keyed by (empty when there are none: load_records then says why)."""
    try:
        root, rel = fd.find_files(path)
    except ValueError:
        return ()
    return tuple((r, os.path.getsize(os.path.join(root, r)),
                  os.stat(os.path.join(root, r)).st_mtime_ns) for r in rel)


def split_names(config) -> list[str]:
    """The splits a records source has: data.splits' names ('train' + a held-out one, or
    its globs' names), or a saved DatasetDict's own (`data.name='hf_disk'`)."""
    try:
        if config.get('name') == 'hf_disk':
            from jaxbig.data.text import hf_disk

            return hf_disk.split_names(hf_disk.load(config.get('path', '')),
                                       config.get('splits', ''))
        return fd.split_names(config.get('splits', ''))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_records(config, split: str, keys: tuple) -> list[tuple[str, dict]]:
    """[(where 'file:line', record)] of `split` of the files at config['path'] (`keys`:
    the columns a Parquet file must have), split by config['splits'] as text corpora are;
    with `data.name='hf_disk'`, the `keys` columns of a saved dataset's rows ('dir[row]')."""
    if config.get('name') == 'hf_disk':
        return _saved_rows(config, split, keys)
    try:
        root, rel = fd.find_files(config.get('path', ''))
        records, where, counts = _read_all(root, stamp(config.get('path', '')), tuple(keys))
        ids = fd.split_ids(rel, counts, split, config.get('splits', ''), root)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [(where[i], records[i]) for i in ids.tolist()]


@functools.lru_cache(maxsize=4)
def _read_all(root: str, files: tuple, keys: tuple) -> tuple:
    """(records, 'file:line' locations (a Parquet file's row), records per file) of
    `files` (`stamp`'s (relative path, size, mtime) of each), read once per content (the
    splits of one source, and its repeated builds, share them)."""
    records, where, counts = [], [], []
    for r, _, _ in files:
        mine = read_file(os.path.join(root, r), keys)
        records += [record for _, record in mine]
        where += [f'{r}:{n}' for n, _ in mine]
        counts.append(len(mine))
    return records, where, counts


def _saved_rows(config, split: str, keys: tuple) -> list[tuple[str, dict]]:
    """load_records of a `save_to_disk` dataset (jaxbig.data.text.hf_disk): its rows read
    from the memory-mapped Arrow table, a column missing is one line."""
    from jaxbig.data.text import hf_disk

    path = config.get('path', '')
    try:
        table, ids = hf_disk.open_split(hf_disk.load(path), path, split, config.get('splits', ''))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise ConfigError(f'{path}: no column {missing[0]!r} (found {table.column_names}); set '
                          'the data.*_key that names it')
    rows = table.select_columns(list(keys))[ids.tolist()] if len(ids) else {k: [] for k in keys}
    return [(f'{path}[{i}]', {k: rows[k][j] for k in keys}) for j, i in enumerate(ids.tolist())]
