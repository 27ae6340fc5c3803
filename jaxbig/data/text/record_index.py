"""The record index of a 'files' source (jaxbig.data.text.file_documents): each file's
record count and, for a plain JSONL file, the byte offset and line number of each record,
saved as one `.npz` in the source's cache folder once its token cache is written (so a
refused source leaves nothing), and read back by the next opening instead of counting
(a compressed file's count is a whole decompression). The folder is keyed by the files'
names, sizes and mtimes; the index also names its files and is ignored when they differ.
"""

from __future__ import annotations

import logging

import numpy as np

from jaxbig.data.text import documents

RECORDS_FILE = 'jaxbig-records.npz'


def load(index: str, rel: tuple) -> dict:
    """{relative path: its entry} of the saved record index, or {} (none, or another
    file list: the folder is keyed by the files' names, sizes and mtimes already)."""
    try:
        with np.load(index, allow_pickle=False) as z:
            if z['rel'].tolist() != list(rel):
                return {}
            counts, starts = z['counts'], z['starts']
            out = {}
            for k, r in enumerate(rel):
                out[r] = {'count': int(counts[k])}
                if starts[k] >= 0:  # a plain JSONL file: its offsets and line numbers
                    a, b = int(starts[k]), int(starts[k]) + int(counts[k])
                    out[r].update(offsets=z['offsets'][a:b], numbers=z['numbers'][a:b])
            return out
    except (OSError, KeyError, ValueError):  # none yet, or unreadable: counted again
        return {}


def save(index: str, rel: tuple, files: tuple) -> None:
    """Writes the record index of `files` (atomically) beside the token cache it served."""
    plain = [f for f in files if f.offsets is not None]
    starts, at = [], 0
    for f in files:
        starts.append(at if f.offsets is not None else -1)
        at += f.count if f.offsets is not None else 0
    arrays = dict(rel=np.asarray(rel), counts=np.asarray([f.count for f in files], np.int64),
                  starts=np.asarray(starts, np.int64),
                  offsets=np.concatenate([f.offsets for f in plain] or [np.zeros(0, np.int64)]),
                  numbers=np.concatenate([f._numbers for f in plain] or [np.zeros(0, np.int64)]))
    try:
        documents._atomic_write(index, lambda f: np.savez(f, **arrays))
    except OSError as e:  # a read-only data dir: counted again next time
        logging.warning('data: cannot save the record index %s (%s)', index, e)
