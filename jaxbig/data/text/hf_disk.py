"""Hugging Face datasets saved with `save_to_disk`, as a text source (`data.name='hf_disk'`).

`data.path` is the directory `Dataset.save_to_disk` / `DatasetDict.save_to_disk` wrote. A
DatasetDict's splits are its own ('train', 'validation', ...); a single Dataset is split as
JSONL files are (`data.splits`: 'validation=0.01' by default, a fixed seed-0 fraction of its
rows). The text is the `data.text_key` column. Rows are read from the memory-mapped Arrow
files by index (`datasets.load_from_disk`, no copy), and the interface is that of the other
sources (jaxbig.data.text.documents): len, read(ids) -> list[bytes], a fingerprint (the
directory's files: names, sizes, mtimes; the text key; the split) and a cache directory
(`<data_dir>/jaxbig-hf-disk/<hash>/`) where the length index and token ids are built once,
as for TFDS splits (jaxbig.data.text.token_cache).

Reading needs the `datasets` library (`pip install 'jaxbig[hf]'`); without it the source is
refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from jaxbig.data.text import file_documents as fd


def _stamp(path: str) -> list:
    out = []
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            out.append([os.path.relpath(full, path), os.path.getsize(full),
                        os.stat(full).st_mtime_ns])
    return out


def load(path: str):
    """The saved Dataset or DatasetDict at `path` (memory-mapped); one-line ValueErrors."""
    try:
        import datasets
    except ImportError:
        raise ValueError("data.name='hf_disk' reads saved datasets with the `datasets` "
                         "library, which is not installed: pip install 'jaxbig[hf]'") from None
    path = os.path.expanduser(path)
    if not path or not os.path.isdir(path):
        raise ValueError(f'data.path={path!r}: not a directory written by save_to_disk')
    try:
        return datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001 (whatever the library says about the directory)
        raise ValueError(f'data.path={path!r}: not a saved dataset ({str(e).splitlines()[0]})'
                         ) from None


def split_names(saved, splits: str) -> list[str]:
    """A DatasetDict's own splits; a single Dataset's are data.splits' ('train' + the
    held-out one, or the names of its globs)."""
    return list(saved.keys()) if hasattr(saved, 'keys') else fd.split_names(splits)


def open_split(saved, path: str, split: str, splits: str):
    """(the Dataset holding `split`, int64 row ids of the split in it)."""
    if hasattr(saved, 'keys'):  # a DatasetDict
        if split not in saved:
            raise ValueError(f'data split {split!r}: {path!r} has {sorted(saved)}')
        return saved[split], np.arange(len(saved[split]), dtype=np.int64)
    return saved, fd.split_ids(['data'], [len(saved)], split, splits, path)


class HFDiskDocuments:
    """The rows of one split of a saved dataset (see the module docstring)."""

    def __init__(self, path: str, split: str, text_key: str, splits: str, data_dir: str):
        saved = load(path)
        path = os.path.expanduser(path)
        table, ids = open_split(saved, path, split, splits)
        if text_key not in table.column_names:
            raise ValueError(f'{path!r}: no data.text_key={text_key!r} column (found '
                             f'{table.column_names})')
        self._table, self._key, self.ids = table.select_columns([text_key]), text_key, ids
        self.fingerprint = {'files': _stamp(path), 'root': os.path.abspath(path),
                            'split': split, 'text_key': text_key,
                            'splits': '' if hasattr(saved, 'keys')
                            else (splits or fd.DEFAULT_SPLITS)}
        key = json.dumps(dict(self.fingerprint, split=None), sort_keys=True).encode()
        digest = hashlib.sha1(key).hexdigest()[:16]
        self.cache_dir = os.path.join(data_dir, 'jaxbig-hf-disk', digest)  # made when written

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, ids) -> list[bytes]:
        rows = self.ids[np.asarray(list(ids), np.int64)].tolist()
        texts = self._table[rows][self._key] if rows else []
        return [(b'' if t is None else str(t).encode('utf-8')).replace(b'\x00', b'')
                for t in texts]
